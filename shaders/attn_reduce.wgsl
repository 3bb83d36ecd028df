// attn_reduce.wgsl: combines the splits of attn_out.wgsl (SPLIT > 0) into the attention output.
// Split z of query i, head h left record rec = (i * n_heads + h) * NSPLIT + z: the unnormalised
// sums acc = sum_a exp(S_a - m_z) V_a at vec4s rec * head_dim / 4 .., and (m_z, l_z) at vec4
// ML0 + rec, l_z = sum_a exp(S_a - m_z). With M = max_z m_z:
// out = sum_z exp(m_z - M) acc_z / sum_z exp(m_z - M) l_z, the softmax over all keys.
// Query i has ceil(total / SPLIT) splits (keys.wgsl), so records of longer queries are not read.
// Dispatch: (n_heads, T, 1), workgroup WG >= head_dim / 4.

struct Step { t: u32, n0c: u32, head0: u32, sinks_cached: u32 }
struct Dims {
    n_heads: u32, n_kv_heads: u32, head_dim: u32, sinks: u32,
    window: u32, scratch_row: u32, lstride: u32, _p: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read> part: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>; // (T, n_heads * head_dim / 4)

override WG: u32 = 16u;
override SPLIT: u32 = 256u;
override NSPLIT: u32 = 1u;
override ML0: u32 = 0u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let i = wid.y;
    let hd4 = dims.head_dim / 4u;
    if (i >= step.t || lid >= hd4) { return; }
    let splits = (span(i).total + SPLIT - 1u) / SPLIT;
    let rec0 = (i * dims.n_heads + h) * NSPLIT;
    var mx = -3.0e38;
    for (var z = 0u; z < splits; z++) { mx = max(mx, part[ML0 + rec0 + z].x); }
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var z = 0u; z < splits; z++) {
        let ml = part[ML0 + rec0 + z];
        let f = exp(ml.x - mx);
        l += ml.y * f;
        acc += part[(rec0 + z) * hd4 + lid] * f;
    }
    out[(i * dims.n_heads + h) * hd4 + lid] = acc / l;
}
