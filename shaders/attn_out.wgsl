// attn_out.wgsl: out[i, h, :] = softmax_a(S[i, h, a]) . V[a] for the G query heads of one KV head
// (keys.wgsl numbers the keys a). One workgroup per (KV head, query); invocation c owns
// dimensions 8c .. 8c+7 of all G heads, so each value row is read once and each probability is
// computed once. Scores come four keys at a time, through a uniform window at this query's rows
// (or, in the wide variant for caches too large for one window, from storage).
// Two passes over the keys: the maximum score per head, then exp-weighted sums.
// Split (flash-decoding, SPLIT > 0): workgroup z takes only the keys SPLIT * z .. SPLIT * (z + 1)
// and writes its unnormalised sums with its maximum and sum of exponentials to `out`, the
// partials buffer (attn_reduce.wgsl's layout), so that long caches are spread over
// ceil(keys / SPLIT) times as many workgroups; attn_reduce.wgsl then combines the splits.
// Dispatch: once per query (the window's dynamic offset; `tile` the query's index), (n_kv_heads,
// 1, splits); the wide variant once for all queries, (n_kv_heads, T, splits). Workgroup
// WG >= head_dim / 8.

struct Step { t: u32, n0c: u32, head0: u32, sinks_cached: u32 }
struct Dims {
    n_heads: u32, n_kv_heads: u32, head_dim: u32, sinks: u32,
    window: u32, scratch_row: u32, lstride: u32, _p: u32,
}
struct Tile { index: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<uniform> sc: array<vec4<f32>, 4096>;     // (n_heads, lstride / 4) of this query
@group(0) @binding(3) var<storage, read> vc: array<vec4<f32>>;     // (scratch_row + T, kv_dim / 4)
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>; // (T, n_heads * head_dim / 4)
@group(0) @binding(5) var<uniform> tile: Tile;

override G: u32 = 1u;    // query heads per KV head, <= 8
override WG: u32 = 8u;   // head_dim / 8 rounded up to a multiple of 8
override SPLIT: u32 = 0u;     // keys per split, a multiple of 4; 0 = one workgroup for all keys
override NSPLIT: u32 = 1u;    // splits of the longest query (partials layout)
override ML0: u32 = 0u;       // first vec4 of the (max, sum) records in the partials buffer

// Scores a .. a+3 of query i, head h (a % 4 == 0).
fn scores4(i: u32, h: u32, a: u32) -> vec4<f32> {
    return sc[(h * dims.lstride + a) / 4u];
}

fn query_index(wid: vec3<u32>) -> u32 {
    return tile.index;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = wid.x;
    let i = query_index(wid);
    if (i >= step.t) { return; }
    let sp = span(i);
    let hd4 = dims.head_dim / 4u;
    let kvd4 = dims.n_kv_heads * hd4;
    let c = min(2u * lid, hd4 - 2u);     // this invocation's first vec4 of the head
    let vb = g * hd4 + c;
    var a4lo = 0u;
    var a4n = (sp.total + 3u) / 4u;
    if (SPLIT > 0u) {
        a4lo = wid.z * (SPLIT / 4u);
        if (a4lo >= a4n) { return; }
        a4n = min(a4n, a4lo + SPLIT / 4u);
    }
    var m: array<f32, 8>;
    var l: array<f32, 8>;
    var acc0: array<vec4<f32>, 8>;
    var acc1: array<vec4<f32>, 8>;
    for (var h = 0u; h < G; h++) {
        var mv = vec4<f32>(-3.0e38);
        for (var a4 = a4lo; a4 < a4n; a4++) {
            let s = scores4(i, g * G + h, a4 * 4u);
            let k = vec4<u32>(a4 * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
            mv = max(mv, select(vec4<f32>(-3.0e38), s, k < vec4<u32>(sp.total)));
        }
        m[h] = max(max(mv.x, mv.y), max(mv.z, mv.w));
    }
    for (var a4 = a4lo; a4 < a4n; a4++) {
        let k = vec4<u32>(a4 * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
        let valid = k < vec4<u32>(sp.total);
        var p: array<vec4<f32>, 8>;
        for (var h = 0u; h < G; h++) {
            let s = scores4(i, g * G + h, a4 * 4u);
            p[h] = select(vec4<f32>(0.0), exp(s - m[h]), valid);
            l[h] += p[h].x + p[h].y + p[h].z + p[h].w;
        }
        for (var j = 0u; j < 4u; j++) {
            let a = min(a4 * 4u + j, sp.total - 1u);
            let row = key_row(i, a, sp) * kvd4 + vb;
            let v0 = vc[row];
            let v1 = vc[row + 1u];
            for (var h = 0u; h < G; h++) {
                let pj = p[h][j];
                acc0[h] += pj * v0;
                acc1[h] += pj * v1;
            }
        }
    }
    if (SPLIT > 0u) {
        for (var h = 0u; h < G; h++) {
            let rec = (i * dims.n_heads + g * G + h) * NSPLIT + wid.z;
            if (2u * lid < hd4) {
                out[rec * hd4 + c] = acc0[h];
                out[rec * hd4 + c + 1u] = acc1[h];
            }
            if (lid == 0u) { out[ML0 + rec] = vec4<f32>(m[h], l[h], 0.0, 0.0); }
        }
        return;
    }
    if (2u * lid < hd4) {
        for (var h = 0u; h < G; h++) {
            let o = (i * dims.n_heads + g * G + h) * hd4 + c;
            out[o] = acc0[h] / l[h];
            out[o + 1u] = acc1[h] / l[h];
        }
    }
}
