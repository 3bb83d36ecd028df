// rmsnorm.wgsl: Y[r, :] = X[src, :] / sqrt(mean(X[src, :]^2) + eps) * g
// for every row r < step.t with src = r; with dims.last_only = 1, one row: src = step.t - 1, r = 0
// (the final norm before the LM head when only the last token's logits are wanted).
// Dispatch: (T or 1, 1, 1), NT threads per row, tree reduction in workgroup memory.

struct Step { t: u32, n0c: u32, head0: u32, sinks_cached: u32 }
struct Dims { d: u32, eps: f32, last_only: u32, _p: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read> x: array<f32>;          // (T, D)
@group(0) @binding(3) var<storage, read> g: array<f32>;          // (D)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // (T, D) or (1, D)

override NT: u32 = 64u;   // threads per row: a power of two <= 64

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(NT)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var src = wid.x;
    if (dims.last_only != 0u) { src = step.t - 1u; }
    let valid = src < step.t;
    var s = 0.0;
    if (valid) {
        for (var i = lid; i < dims.d; i += NT) { let v = x[src * dims.d + i]; s += v * v; }
    }
    red[lid] = s;
    workgroupBarrier();
    for (var k = NT / 2u; k > 0u; k >>= 1u) {
        if (lid < k) { red[lid] += red[lid + k]; }
        workgroupBarrier();
    }
    if (!valid) { return; }
    let inv = inverseSqrt(red[0] / f32(dims.d) + dims.eps);
    for (var i = lid; i < dims.d; i += NT) { y[wid.x * dims.d + i] = x[src * dims.d + i] * inv * g[i]; }
}
