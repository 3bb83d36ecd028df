// attn_out.wgsl: out[i, h, :] = softmax_a(S[i, h, a]) . V[a] for every query i of the block and the
// G query heads of one KV head (keys.wgsl numbers the keys). One workgroup per (KV head, query);
// invocation c owns dimensions 4c .. 4c+3 of all G heads, so every value row is read once.
// Two passes over the keys: the maximum score, then exp-weighted sums.
// Dispatch: (n_kv_heads, T, 1), workgroup WG >= head_dim / 4.

struct Step { t: u32, n0c: u32, head0: u32, sinks_cached: u32 }
struct Dims {
    n_heads: u32, n_kv_heads: u32, head_dim: u32, sinks: u32,
    window: u32, scratch_row: u32, lstride: u32, _p: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read> sc: array<f32>;          // (T, n_heads, lstride)
@group(0) @binding(3) var<storage, read> vc: array<vec4<f32>>;    // (scratch_row + T, kv_dim / 4)
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>; // (T, n_heads * head_dim / 4)

override G: u32 = 1u;    // query heads per KV head, <= 8
override WG: u32 = 16u;  // head_dim / 4 rounded up to a multiple of 8

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = wid.x;
    let i = wid.y;
    if (i >= step.t) { return; }
    let sp = span(i);
    let hd4 = dims.head_dim / 4u;
    let kvd4 = dims.n_kv_heads * hd4;
    let c = min(lid, hd4 - 1u);
    let sbase = (i * dims.n_heads + g * G) * dims.lstride;
    var m: array<f32, 8>;
    var l: array<f32, 8>;
    var acc: array<vec4<f32>, 8>;
    for (var h = 0u; h < G; h++) { m[h] = -3.0e38; }
    for (var a = 0u; a < sp.total; a++) {
        for (var h = 0u; h < G; h++) { m[h] = max(m[h], sc[sbase + h * dims.lstride + a]); }
    }
    for (var a = 0u; a < sp.total; a++) {
        let v = vc[key_row(i, a, sp) * kvd4 + g * hd4 + c];
        for (var h = 0u; h < G; h++) {
            let p = exp(sc[sbase + h * dims.lstride + a] - m[h]);
            l[h] += p;
            acc[h] += p * v;
        }
    }
    if (lid < hd4) {
        for (var h = 0u; h < G; h++) {
            out[(i * dims.n_heads + g * G + h) * hd4 + c] = acc[h] / l[h];
        }
    }
}
