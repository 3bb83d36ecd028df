// embed.wgsl: X[t, :] = E[tokens[t], :] for the tokens whose row lies in this part of the
// embedding [row0, row0 + rows) (a large embedding is split across buffers).
// weights8() from dequant.wgsl dequantises 8 weights at a time.
// Dispatch: (T, 1, 1), 64 threads per token, each writing units of 8 values.

struct Step { t: u32, n0c: u32, head0: u32, sinks_cached: u32 }
struct Dims { k: u32, row0: u32, rows: u32, row_words: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read> w: array<u32>;          // (ceil(rows / 64) * 64, row_words), rows interleaved by 64
@group(0) @binding(3) var<storage, read> tokens: array<u32>;     // (T)
@group(0) @binding(4) var<storage, read_write> x: array<vec4<f32>>; // (T, K / 4)

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.x;
    if (t >= step.t) { return; }
    let tok = tokens[t];
    if (tok < dims.row0 || tok >= dims.row0 + dims.rows) { return; }
    let row = row_start(tok - dims.row0, dims.row_words);
    for (var u = lid; u < dims.k / 8u; u += 64u) {
        let v = weights8(row, u);
        x[t * dims.k / 4u + u * 2u] = v.a;
        x[t * dims.k / 4u + u * 2u + 1u] = v.b;
    }
}
