// rope.wgsl: rotates the block's queries and keys (RoPE) and stages its keys and values in the
// cache's scratch rows, where attention reads them and kv_write.wgsl copies them into their slots.
// The rotations come from the host, computed in f64 per token (src/engine.rs): rot[t][0] for the
// token's stream index n, rot[t][1] for its cache position P = min(n, S + W - 1). Keys are stored
// rotated by their stream index and every query is rotated twice: by n for the ring (the distance
// to a ring key is then n - m, its age, exactly the cache rule's P - position) and by P for the
// sinks (sink m sits at position m). So the kernels never see an angle past the cache's own span.
// Pairs (2p, 2p+1) for rope_layout 0 (GGUF), (p, p + head_dim/2) for 1 (Hugging Face).
// A single token (decode) also goes straight into its cache slot, which no query of the block
// still needs, so kv_write.wgsl is skipped then.
// Dispatch: (T, 1, 1), 64 threads striding over every head's pairs.

struct Step { t: u32, n0c: u32, head0: u32, sinks_cached: u32 }
struct Dims {
    n_heads: u32, n_kv_heads: u32, head_dim: u32, rope_layout: u32,
    qkv_stride: u32, scratch_row: u32, sinks: u32, _p: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;         // (T, qkv_stride): q | k | v
@group(0) @binding(3) var<storage, read> rot: array<vec2<f32>>;   // (T, 2, head_dim / 2): (cos, sin)
@group(0) @binding(4) var<storage, read_write> qr: array<f32>;    // (T, 2, n_heads * head_dim)
@group(0) @binding(5) var<storage, read_write> kc: array<f32>;    // (scratch_row + T, kv_dim)
@group(0) @binding(6) var<storage, read_write> vc: array<f32>;    // (scratch_row + T, kv_dim)

fn pair(i: u32) -> vec2<u32> {
    if (dims.rope_layout == 0u) { return vec2<u32>(2u * i, 2u * i + 1u); }
    return vec2<u32>(i, i + dims.head_dim / 2u);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.x;
    if (t >= step.t) { return; }
    let hd = dims.head_dim;
    let hh = hd / 2u;
    let qd = dims.n_heads * hd;
    let kvd = dims.n_kv_heads * hd;
    let src = t * dims.qkv_stride;
    let dst = (dims.scratch_row + t) * kvd;
    // the slot of a lone token (kv_write.wgsl's rule for a block of one)
    var slot = dims.sinks + step.head0;
    if (step.sinks_cached < dims.sinks) { slot = step.n0c; }
    let single = step.t == 1u;
    for (var j = lid; j < (dims.n_heads + dims.n_kv_heads) * hh; j += 64u) {
        let head = j / hh;
        let p = j % hh;
        let ix = pair(p);
        let ring = rot[(t * 2u) * hh + p];
        if (head < dims.n_heads) {
            let o = head * hd;
            let a = qkv[src + o + ix.x];
            let b = qkv[src + o + ix.y];
            let sink = rot[(t * 2u + 1u) * hh + p];
            let q0 = t * 2u * qd + o;
            qr[q0 + ix.x] = a * ring.x - b * ring.y;
            qr[q0 + ix.y] = a * ring.y + b * ring.x;
            qr[q0 + qd + ix.x] = a * sink.x - b * sink.y;
            qr[q0 + qd + ix.y] = a * sink.y + b * sink.x;
        } else {
            let o = (head - dims.n_heads) * hd;
            let a = qkv[src + qd + o + ix.x];
            let b = qkv[src + qd + o + ix.y];
            let k0 = a * ring.x - b * ring.y;
            let k1 = a * ring.y + b * ring.x;
            kc[dst + o + ix.x] = k0;
            kc[dst + o + ix.y] = k1;
            if (single) {
                kc[slot * kvd + o + ix.x] = k0;
                kc[slot * kvd + o + ix.y] = k1;
            }
        }
    }
    for (var j = lid; j < kvd; j += 64u) {
        let v = qkv[src + qd + kvd + j];
        vc[dst + j] = v;
        if (single) { vc[slot * kvd + j] = v; }
    }
}
