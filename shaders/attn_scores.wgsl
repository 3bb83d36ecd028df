// attn_scores.wgsl: S[i, h, a] = (q_i,h . k_a) / sqrt(head_dim) for every query i of one tile, head
// h and key a the query attends to (keys.wgsl). Keys were stored rotated by their stream index
// (rope.wgsl); a query uses its ring rotation for ring keys and its sink rotation for sinks.
// An invocation computes RK keys (one per 64-key stride) for the G query heads that share a KV
// head, so a key row is read once for all of them; the queries, the same for the whole workgroup,
// come from a uniform buffer.
// Dispatch, once per tile of TQ queries (dynamic offsets: Q at the tile's first query, `tile` its
// index): (ceil(keys / (64 * RK)), n_kv_heads, TQ), workgroup 64.

struct Step { t: u32, n0c: u32, head0: u32, sinks_cached: u32 }
struct Dims {
    n_heads: u32, n_kv_heads: u32, head_dim: u32, sinks: u32,
    window: u32, scratch_row: u32, lstride: u32, scale: f32,
}
struct Tile { index: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<uniform> q: array<vec4<f32>, 4096>;     // (TQ, 2, n_heads * head_dim / 4): ring | sink
@group(0) @binding(3) var<storage, read> kc: array<vec4<f32>>;    // (scratch_row + T, kv_dim / 4)
@group(0) @binding(4) var<storage, read_write> sc: array<f32>;    // (T, n_heads, lstride)
@group(0) @binding(5) var<uniform> tile: Tile;

override G: u32 = 1u;    // query heads per KV head, <= 8
override RK: u32 = 4u;   // keys per invocation, <= 8, RK * G <= 32
override TQ: u32 = 1u;   // queries per tile

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = wid.y;
    let i = tile.index * TQ + wid.z;
    if (i >= step.t) { return; }
    let sp = span(i);
    let hd4 = dims.head_dim / 4u;
    let kvd4 = dims.n_kv_heads * hd4;
    let qd4 = dims.n_heads * hd4;
    let a0 = wid.x * 64u * RK + lid;
    if (wid.x * 64u * RK >= sp.total) { return; }
    var rows: array<u32, 8>;
    for (var r = 0u; r < RK; r++) {
        rows[r] = key_row(i, min(a0 + r * 64u, sp.total - 1u), sp) * kvd4 + g * hd4;
    }
    let has_sinks = wid.x * 64u * RK < sp.ns;
    let qbase = wid.z * 2u * qd4 + g * G * hd4;
    var acc: array<f32, 32>;    // [r * G + h]
    for (var d = 0u; d < hd4; d++) {
        var kv: array<vec4<f32>, 8>;
        for (var r = 0u; r < RK; r++) { kv[r] = kc[rows[r] + d]; }
        for (var h = 0u; h < G; h++) {
            let qring = q[qbase + h * hd4 + d];
            var qsink = qring;
            if (has_sinks) { qsink = q[qbase + qd4 + h * hd4 + d]; }
            for (var r = 0u; r < RK; r++) {
                acc[r * G + h] += dot(kv[r], select(qring, qsink, a0 + r * 64u < sp.ns));
            }
        }
    }
    for (var r = 0u; r < RK; r++) {
        let a = a0 + r * 64u;
        if (a < sp.total) {
            for (var h = 0u; h < G; h++) {
                sc[(i * dims.n_heads + g * G + h) * dims.lstride + a] = acc[r * G + h] * dims.scale;
            }
        }
    }
}
