// keys.wgsl: which keys query i of the block attends to and where they are (src/cache.rs); appended
// to attn_scores.wgsl and attn_out.wgsl, whose Dims carry sinks, window and scratch_row.
// Query i is stream token n = n0 + i. Its keys, numbered a = 0 .. total - 1: first
// ns = min(S, n + 1) sinks (sink a is stream token a), then L = min(n + 1 - S, W) ring tokens
// (none if n < S), oldest first, the newest being n itself. A key from this block lives in the
// cache's scratch rows (scratch_row + its block row), an older one in its slot: sink a in slot a,
// the k-th newest cached ring token in S + (head0 - 1 - k) mod W.
// n0c is n0 clamped to S + W: every quantity above saturates there, so u32 never overflows.

struct Span { ns: u32, total: u32 }

fn span(i: u32) -> Span {
    let n = step.n0c + i;
    let ns = min(dims.sinks, n + 1u);
    var ring = 0u;
    if (n >= dims.sinks) { ring = min(n + 1u - dims.sinks, dims.window); }
    return Span(ns, ns + ring);
}

// The cache row of query i's key a (a < total).
fn key_row(i: u32, a: u32, sp: Span) -> u32 {
    if (a < sp.ns) {
        if (a < step.sinks_cached) { return a; }
        return dims.scratch_row + a - step.n0c;
    }
    let k = sp.total - 1u - a;      // 0 = the newest: query i itself
    if (k <= i) { return dims.scratch_row + i - k; }
    // head0 < W and k - i - 1 < W, so one conditional subtraction replaces a modulo (integer
    // division is slow where SIMD lanes run on a CPU)
    var r = step.head0 + dims.window - 1u - (k - i - 1u);
    if (r >= dims.window) { r -= dims.window; }
    return dims.sinks + r;
}
