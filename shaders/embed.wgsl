// embed.wgsl: X[t, :] = E[tokens[t], :] for the tokens whose row lies in this part of the
// embedding [row0, row0 + rows) (a large embedding is split across buffers); weights.wgsl reads
// the GPU layout. Dispatch: (T, 1, 1), 64 threads per token, each writing units of 4 values.

struct Step { t: u32, n0c: u32, head0: u32, sinks_cached: u32 }
struct Dims { k: u32, row0: u32, rows: u32, group_vec4s: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;       // (ceil(rows / 8), group_vec4s)
@group(0) @binding(3) var<storage, read> tokens: array<u32>;        // (T)
@group(0) @binding(4) var<storage, read_write> x: array<vec4<f32>>; // (T, K / 4)

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.x;
    if (t >= step.t) { return; }
    let tok = tokens[t];
    if (tok < dims.row0 || tok >= dims.row0 + dims.rows) { return; }
    let r = tok - dims.row0;
    let base = (r / 8u) * dims.group_vec4s + r % 8u;
    let units = dims.k / 32u;
    let pv = payload_vec4s();
    // one invocation per 4 weights: unit q / 8, quarter-of-a-unit q % 8
    for (var q = lid; q < dims.k / 4u; q += 64u) {
        let u = q / 8u;
        let s = q % 8u;
        var scale = 0u;
        if (has_scales()) { scale = w[base + (units * pv + u / 4u) * 8u][u % 4u]; }
        let v = w[base + (u * pv + s * pv / 8u) * 8u];
        let dm = scale_dm(scale);
        x[t * dims.k / 4u + q] = raw4(v, s) * dm.x + dm.y;
    }
}
