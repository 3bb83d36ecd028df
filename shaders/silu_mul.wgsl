// silu_mul.wgsl: G[i] = silu(G[i]) * U[i] = G[i] / (1 + exp(-G[i])) * U[i], for i < step.t * dims.f
// (the SwiGLU gate, in place). Dispatch: (ceil(T * F / 256), 1, 1), one element per thread.

struct Step { t: u32, n0c: u32, head0: u32, sinks_cached: u32 }
struct Dims { f: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read_write> gate: array<f32>; // (T, F)
@group(0) @binding(3) var<storage, read> up: array<f32>;         // (T, F)

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= step.t * dims.f) { return; }
    let v = gate[i];
    gate[i] = v / (1.0 + exp(-v)) * up[i];
}
