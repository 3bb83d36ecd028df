// matmul.wgsl: Y[t, y_offset + n] (+)= sum_k X[t, k] * W[n, k] (+ bias[n])
// for t < step.t (tokens in the block) and n < dims.n (rows of this weight part).
// Weights stay quantised; weights8() from dequant.wgsl expands 8 at a time.
// One invocation computes one output row n for a tile of TT tokens (an override: 1 for decode,
// 8 for prefill), so each weight is dequantised once per tile and no barrier is needed. Rows of
// a partial last tile are clamped to the last token and their results dropped.
// Dispatch: (min(ceil(N / 64), 32768), ceil(T / TT), ceil(N / 64 / 32768)), workgroup 64.
// flags: 1 = accumulate into Y (fuses the residual add), 2 = add bias.

struct Step { t: u32, n0c: u32, head0: u32, sinks_cached: u32 }
struct Dims { k: u32, n: u32, y_stride: u32, y_offset: u32, row_words: u32, flags: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read> w: array<u32>;          // (ceil(N / 64) * 64, row_words), rows interleaved by 64
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;    // (T, K / 4)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // (T, y_stride)
@group(0) @binding(5) var<storage, read> bias: array<f32>;       // (N) or a dummy

override TT: u32 = 1u;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = (wid.x + wid.z * 32768u) * 64u + lid;
    let t0 = wid.y * TT;
    if (n >= dims.n || t0 >= step.t) { return; }
    let k4 = dims.k / 4u;
    var xrow: array<u32, 8>;     // TT <= 8
    for (var t = 0u; t < TT; t++) { xrow[t] = min(t0 + t, step.t - 1u) * k4; }
    var acc: array<f32, 8>;
    let row = row_start(n, dims.row_words);
    for (var u = 0u; u < dims.k / 8u; u++) {
        let wv = weights8(row, u);
        for (var t = 0u; t < TT; t++) {
            let i = xrow[t] + u * 2u;
            acc[t] += dot(wv.a, x[i]) + dot(wv.b, x[i + 1u]);
        }
    }
    for (var t = 0u; t < TT; t++) {
        if (t0 + t < step.t) {
            let i = (t0 + t) * dims.y_stride + dims.y_offset + n;
            var v = acc[t];
            if ((dims.flags & 2u) != 0u) { v += bias[n]; }
            if ((dims.flags & 1u) != 0u) { v += y[i]; }
            y[i] = v;
        }
    }
}
