// select.wgsl: picks the candidates the next token is drawn from, so that only they, not the whole
// row of logits, travel back to the host (src/sampler.rs draws from them with its seeded RNG).
//   1. The repetition penalty, applied in place to the recent tokens (each once): a positive
//      logit is divided by it, a negative one multiplied.
//   2. k = 1 (greedy): the largest logit, the lowest id among equals.
//      k > 1: every logit >= a threshold t with at least k of them, found by bisection on
//      [max - span, max] to 1/65536 of that range. The host sets span = 30 x temperature, so a
//      logit left out has a probability below e^-30 of the best one's.
// NaN logits count as -inf. Output: count, then (id, logit) pairs in no particular order (the
// host sorts them); a count above CAP means "too many ties: read the whole row instead".
// Dispatch: (1, 1, 1), 256 threads each striding over the vocabulary.

struct Params { vocab: u32, k: u32, penalty: f32, n_recent: u32, span: f32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;  // (vocab): the last token's row
@group(0) @binding(2) var<storage, read> recent: array<u32>;        // (n_recent)
@group(0) @binding(3) var<storage, read_write> out: array<u32>;     // [count, _, _, _, (id, logit bits) x CAP]

const CAP: u32 = 256u;

var<workgroup> red_v: array<f32, 256>;
var<workgroup> red_i: array<u32, 256>;
var<workgroup> count: atomic<u32>;

fn value(i: u32) -> f32 {
    let v = logits[i];
    return select(v, -3.0e38, v != v);
}

// Sum of `c` over the workgroup, visible to every thread.
fn total(lid: u32, c: u32) -> u32 {
    red_i[lid] = c;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) { red_i[lid] += red_i[lid + s]; }
        workgroupBarrier();
    }
    let t = red_i[0];
    workgroupBarrier();
    return t;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    if (lid == 0u) {
        atomicStore(&count, 0u);
        for (var j = 0u; j < prm.n_recent; j++) {
            let id = recent[j];
            var seen = id >= prm.vocab;
            for (var e = 0u; e < j; e++) { seen = seen || recent[e] == id; }
            if (!seen) {
                let v = logits[id];
                logits[id] = select(v * prm.penalty, v / prm.penalty, v > 0.0);
            }
        }
    }
    storageBarrier();
    workgroupBarrier();

    // the best logit (lowest id among equals)
    var bv = -3.0e38;
    var bi = 0xffffffffu;
    for (var i = lid; i < prm.vocab; i += 256u) {
        let v = value(i);
        if (v > bv) { bv = v; bi = i; }
    }
    red_v[lid] = bv;
    red_i[lid] = bi;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let ov = red_v[lid + s];
            let oi = red_i[lid + s];
            if (ov > red_v[lid] || (ov == red_v[lid] && oi < red_i[lid])) {
                red_v[lid] = ov;
                red_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let best = red_v[0];
    let best_i = red_i[0];
    workgroupBarrier();
    if (prm.k <= 1u) {
        if (lid == 0u) {
            out[0] = 1u;
            out[4] = best_i;
            out[5] = bitcast<u32>(best);
        }
        return;
    }

    // the threshold: the largest t (to the bisection's precision) with at least k logits >= t
    var lo = best - prm.span;
    var hi = best;
    for (var it = 0u; it < 16u; it++) {
        let mid = 0.5 * (lo + hi);
        var c = 0u;
        for (var i = lid; i < prm.vocab; i += 256u) { c += u32(value(i) >= mid); }
        if (total(lid, c) >= prm.k) { lo = mid; } else { hi = mid; }
    }

    for (var i = lid; i < prm.vocab; i += 256u) {
        let v = value(i);
        if (v >= lo) {
            let slot = atomicAdd(&count, 1u);
            if (slot < CAP) {
                out[4u + 2u * slot] = i;
                out[5u + 2u * slot] = bitcast<u32>(v);
            }
        }
    }
    workgroupBarrier();
    if (lid == 0u) { out[0] = atomicLoad(&count); }
}
