// rope.wgsl: the epilogue of the Q/K/V projection (appended to matmul.wgsl for Kernel::MatmulRope):
// rotates the block's queries and keys (RoPE) and stages its keys and values in the cache's
// scratch rows, where attention reads them and kv_write.wgsl copies them into their slots.
// The rotations come from the host, computed in f64 per token (src/engine.rs): rot[t][0] for the
// token's stream index n, rot[t][1] for its cache position P = min(n, S + W - 1). Keys are stored
// rotated by their stream index and every query is rotated twice: by n for the ring (the distance
// to a ring key is then n - m, its age, exactly the cache rule's P - position) and by P for the
// sinks (sink m sits at position m). So the kernels never see an angle past the cache's own span.
// Rotation pairs are dimensions (2p, 2p+1) for rope_layout 0 (GGUF), (p, p + head_dim/2) for 1
// (Hugging Face). The projection's rows were reordered on upload (src/engine.rs `qkv_order`) so
// that a pair's two rows are the same lane of two neighbouring row groups, which one matmul
// invocation computes: pair pr (numbered head by head through Q, then K) is at rows
// 16 (pr / 8) + pr % 8 and that + 8 of its section; V keeps its order. Each section (Q, K, V) is
// padded with zero rows to whole blocks of 16: q_rows and kv_rows rows.
// A single token (decode) also goes straight into its cache slot, which no query of the block
// still needs, so kv_write.wgsl is skipped then.

struct RopeDims {
    n_heads: u32, n_kv_heads: u32, head_dim: u32, rope_layout: u32,
    q_rows: u32, kv_rows: u32, scratch_row: u32, sinks: u32,
}

@group(0) @binding(7) var<uniform> rd: RopeDims;
@group(0) @binding(8) var<storage, read> rot: array<vec2<f32>>;   // (T, 2, head_dim / 2): (cos, sin)
@group(0) @binding(9) var<storage, read_write> qr: array<f32>;    // (T, 2, n_heads * head_dim)
@group(0) @binding(10) var<storage, read_write> kc: array<f32>;   // (scratch_row + T, kv_dim)
@group(0) @binding(11) var<storage, read_write> vc: array<f32>;   // (scratch_row + T, kv_dim)

const ROPE = true;

// Token i's outputs a and b at projection rows c and c + 8 (c in an even row group).
fn rope_pair(i: u32, c: u32, a: f32, b: f32) {
    let hd = rd.head_dim;
    let hh = hd / 2u;
    let qd = rd.n_heads * hd;
    let kvd = rd.n_kv_heads * hd;
    let dst = (rd.scratch_row + i) * kvd;
    // the slot of a lone token (kv_write.wgsl's rule for a block of one)
    var slot = rd.sinks + step.head0;
    if (step.sinks_cached < rd.sinks) { slot = step.n0c; }
    let single = step.t == 1u;
    if (c >= rd.q_rows + rd.kv_rows) {
        let j = c - rd.q_rows - rd.kv_rows;
        if (j < kvd) {
            vc[dst + j] = a;
            if (single) { vc[slot * kvd + j] = a; }
        }
        if (j + 8u < kvd) {
            vc[dst + j + 8u] = b;
            if (single) { vc[slot * kvd + j + 8u] = b; }
        }
        return;
    }
    let is_q = c < rd.q_rows;
    var local = c;
    var width = qd;
    if (!is_q) {
        local = c - rd.q_rows;
        width = kvd;
    }
    let pr = (local / 16u) * 8u + local % 8u;
    if (2u * pr >= width) { return; }    // padding
    let h = pr / hh;
    let p = pr % hh;
    var ix = vec2<u32>(2u * p, 2u * p + 1u);
    if (rd.rope_layout == 1u) { ix = vec2<u32>(p, p + hh); }
    ix += vec2<u32>(h * hd);
    let ring = rot[(i * 2u) * hh + p];
    let r0 = a * ring.x - b * ring.y;
    let r1 = a * ring.y + b * ring.x;
    if (is_q) {
        let sink = rot[(i * 2u + 1u) * hh + p];
        let q0 = i * 2u * qd;
        qr[q0 + ix.x] = r0;
        qr[q0 + ix.y] = r1;
        qr[q0 + qd + ix.x] = a * sink.x - b * sink.y;
        qr[q0 + qd + ix.y] = a * sink.y + b * sink.x;
    } else {
        kc[dst + ix.x] = r0;
        kc[dst + ix.y] = r1;
        if (single) {
            kc[slot * kvd + ix.x] = r0;
            kc[slot * kvd + ix.y] = r1;
        }
    }
}
