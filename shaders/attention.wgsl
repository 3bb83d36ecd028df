// attention.wgsl: grouped-query attention of every query in the block over the sink + ring cache
// and the block itself, exactly as if the block's tokens had been decoded one at a time.
// Query i of the block is stream token n = n0 + i. It sees (src/cache.rs):
//   ns = min(S, n + 1) sink tokens at positions 0 .. ns-1,
//   L = min(n + 1 - S, W) ring tokens (0 if n < S), the newest being n itself, at ns .. ns+L-1.
// A token at or after n0 is read from the block (Kb, Vb), an older one from the cache (Kc, Vc):
// sink m from slot m, the k-th newest cached ring token from slot S + (head0 - 1 - k) mod W.
// Keys are stored before RoPE and rotated here with their position; the query is rotated with
// its own position ns + L - 1. RoPE pairs (2p, 2p+1) for rope_layout 0, (p, p + head_dim/2) for 1,
// angles from the table rope[pos][p] = (cos, sin).
// out = softmax(q.k / sqrt(head_dim)) . v, with an online softmax over tiles of 64 keys.
// Dispatch: (n_heads, T, 1); 64 threads: one key each per tile, then head_dim/64 output dims each.
// n0c is n0 clamped to S + W: every quantity above saturates there, so u32 never overflows.

struct Step { t: u32, n0c: u32, head0: u32, sinks_cached: u32 }
struct Dims {
    n_heads: u32, n_kv_heads: u32, head_dim: u32, sinks: u32,
    window: u32, rope_layout: u32, scale: f32, _p: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read> q: array<f32>;          // (T, n_heads * head_dim)
@group(0) @binding(3) var<storage, read> kb: array<f32>;         // (T, n_kv_heads * head_dim)
@group(0) @binding(4) var<storage, read> vb: array<f32>;         // (T, n_kv_heads * head_dim)
@group(0) @binding(5) var<storage, read> kc: array<f32>;         // (S + W, n_kv_heads * head_dim)
@group(0) @binding(6) var<storage, read> vc: array<f32>;         // (S + W, n_kv_heads * head_dim)
@group(0) @binding(7) var<storage, read> rope: array<vec2<f32>>; // (S + W, head_dim / 2): (cos, sin)
@group(0) @binding(8) var<storage, read_write> out: array<f32>;  // (T, n_heads * head_dim)

var<workgroup> qv: array<f32, 256>;
var<workgroup> p: array<f32, 64>;
var<workgroup> red: array<f32, 64>;
var<workgroup> src: array<u32, 64>;   // offset of the key's row; top bit set: from the block

fn pair(i: u32) -> vec2<u32> {
    if (dims.rope_layout == 0u) { return vec2<u32>(2u * i, 2u * i + 1u); }
    return vec2<u32>(i, i + dims.head_dim / 2u);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let i = wid.y;
    let hd = dims.head_dim;
    let hh = hd / 2u;
    let kvd = dims.n_kv_heads * hd;
    let kvh = h / (dims.n_heads / dims.n_kv_heads);
    let n = step.n0c + i;
    let ns = min(dims.sinks, n + 1u);
    var ring = 0u;
    if (n >= dims.sinks) { ring = min(n + 1u - dims.sinks, dims.window); }
    let total = ns + ring;

    let qoff = i * dims.n_heads * hd + h * hd;
    for (var k = lid; k < hh; k += 64u) {
        let ix = pair(k);
        let cs = rope[(total - 1u) * hh + k];
        let a = q[qoff + ix.x];
        let b = q[qoff + ix.y];
        qv[ix.x] = a * cs.x - b * cs.y;
        qv[ix.y] = a * cs.y + b * cs.x;
    }
    workgroupBarrier();

    var m_run = -3.0e38;
    var l_run = 0.0;
    var acc: array<f32, 4>;
    for (var a0 = 0u; a0 < total; a0 += 64u) {
        let a = a0 + lid;
        var s = -3.0e38;
        var off = 0u;
        if (a < total) {
            var from_block = false;
            var row = 0u;
            if (a < ns) {
                if (a < step.sinks_cached) { row = a; } else { from_block = true; row = a - step.n0c; }
            } else {
                let k = total - 1u - a;             // 0 = the newest, n itself
                if (k <= i) { from_block = true; row = i - k; }
                else { row = dims.sinks + (step.head0 + dims.window - 1u - (k - i - 1u)) % dims.window; }
            }
            off = row * kvd + kvh * hd;
            var dot = 0.0;
            for (var k = 0u; k < hh; k++) {
                let ix = pair(k);
                let cs = rope[a * hh + k];
                var x0: f32; var x1: f32;
                if (from_block) { x0 = kb[off + ix.x]; x1 = kb[off + ix.y]; }
                else { x0 = kc[off + ix.x]; x1 = kc[off + ix.y]; }
                dot += qv[ix.x] * (x0 * cs.x - x1 * cs.y) + qv[ix.y] * (x0 * cs.y + x1 * cs.x);
            }
            s = dot * dims.scale;
            if (from_block) { off |= 0x80000000u; }
        }
        red[lid] = s;
        src[lid] = off;
        workgroupBarrier();
        for (var k = 32u; k > 0u; k >>= 1u) {
            if (lid < k) { red[lid] = max(red[lid], red[lid + k]); }
            workgroupBarrier();
        }
        let m_new = max(m_run, red[0]);
        let corr = exp(m_run - m_new);
        p[lid] = select(0.0, exp(s - m_new), a < total);
        workgroupBarrier();
        l_run *= corr;
        for (var d = 0u; d < 4u; d++) { acc[d] *= corr; }
        let cnt = min(64u, total - a0);
        for (var j = 0u; j < cnt; j++) {
            let pj = p[j];
            l_run += pj;
            let o = src[j];
            for (var d = 0u; d < 4u; d++) {
                let dim = lid + d * 64u;
                if (dim < hd) {
                    if ((o & 0x80000000u) != 0u) { acc[d] += pj * vb[(o & 0x7fffffffu) + dim]; }
                    else { acc[d] += pj * vc[o + dim]; }
                }
            }
        }
        m_run = m_new;
        workgroupBarrier();
    }
    for (var d = 0u; d < 4u; d++) {
        let dim = lid + d * 64u;
        if (dim < hd) { out[qoff + dim] = acc[d] / l_run; }
    }
}
