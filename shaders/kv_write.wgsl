// kv_write.wgsl: moves the block's keys and values from the cache's scratch rows (rope.wgsl) into
// the slots the cache rule gives them (src/cache.rs), after attention has read them. Block row j
// is stream token m = n0 + j:
//   j < sink_rows = S - sinks_cached: sink slot n0 + j;
//   otherwise ring slot S + (head0 + j - sink_rows) mod W, written only when no later row of the
//   block lands on the same slot (T - 1 - j < W), so parallel writes never race.
// Dispatch: (T, 1, 1), 64 threads copying kv_dim values of K and V.

struct Step { t: u32, n0c: u32, head0: u32, sinks_cached: u32 }
struct Dims { kv_dim: u32, sinks: u32, window: u32, scratch_row: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read_write> kc: array<f32>;   // (S + W + max_batch, kv_dim)
@group(0) @binding(3) var<storage, read_write> vc: array<f32>;   // (S + W + max_batch, kv_dim)

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = wid.x;
    if (j >= step.t) { return; }
    let sink_rows = dims.sinks - step.sinks_cached;
    var slot: u32;
    if (j < sink_rows) {
        slot = step.n0c + j;
    } else {
        if (step.t - 1u - j >= dims.window) { return; }
        slot = dims.sinks + (step.head0 + j - sink_rows) % dims.window;
    }
    let src = (dims.scratch_row + j) * dims.kv_dim;
    for (var i = lid; i < dims.kv_dim; i += 64u) {
        kc[slot * dims.kv_dim + i] = kc[src + i];
        vc[slot * dims.kv_dim + i] = vc[src + i];
    }
}
