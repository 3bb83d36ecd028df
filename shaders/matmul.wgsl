// matmul.wgsl: Y[t0 + t, y_offset + n] (+)= sum_k X[t, k] * W[n, k] (+ bias[n]) for the tokens
// t < min(TT, step.t - t0) of one tile and the rows n < dims.n of one weight part; weights stay in
// their file formats (weights.wgsl). With flag 4 (SwiGLU) the part's row groups alternate gate
// and up (8 rows each) and the output is silu(gate) * up, row (group / 2) * 8 + lane.
// Work split, chosen for SIMD-on-CPU drivers as much as for GPUs: an invocation computes RG row
// groups x TT tokens for one row lane (lane = invocation % 8, so 8 neighbouring invocations read
// consecutive memory); each weight is dequantised once per tile and each X value, the same for
// every invocation, is read from a uniform buffer and used RG times.
// Dispatch, once per tile of TT tokens (dynamic offsets: X at the tile's first token, `tile` its
// index): (ceil(ceil(N / 8) / RG * 8 / WGS), 1, 1), workgroup WGS.
// flags: 1 = accumulate into Y (fuses the residual add), 2 = add bias, 4 = SwiGLU.
// Kernel::MatmulRope appends rope.wgsl (ROPE = true): the Q/K/V projection, whose outputs go
// through rope_pair to the rotated queries and the cache instead of Y; otherwise a stub
// (ROPE = false) is appended.
// Subgroup variant (src/gpu.rs `matmul`, native adapters with subgroups of 8 or more): main also
// takes its subgroup lane and the decode product's X loads become one load per invocation and
// subgroup broadcasts, so a SIMD group of 8 loads a unit's inputs once instead of 8 times.

struct Step { t: u32, n0c: u32, head0: u32, sinks_cached: u32 }
struct Dims {
    k: u32, n: u32, y_stride: u32, y_offset: u32,
    group_vec4s: u32, flags: u32, out_n: u32, _p: u32,
}
struct Tile { index: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;   // (ceil(N / 8), group_vec4s)
@group(0) @binding(3) var<uniform> x: array<vec4<f32>, 4096>;   // (TT, K / 4) from the tile's first token
@group(0) @binding(4) var<storage, read_write> y: array<f32>;   // (T, y_stride)
@group(0) @binding(5) var<storage, read> bias: array<f32>;      // (N) or a dummy
@group(0) @binding(6) var<uniform> tile: Tile;

override TT: u32 = 1u;   // tokens per invocation, RG * TT <= 32
override RG: u32 = 4u;   // row groups per invocation, <= 4 (even for SwiGLU)
override WGS: u32 = 64u; // invocations per workgroup, a multiple of 8

// Quarter s (weights 4s .. 4s+3, s a literal) of unit u for every row and token of the tile:
// acc[r * TT + t] += w[r, 32u + 4s ..] . X[t, 32u + 4s ..]. The payload vec4 holding the quarter
// is loaded when s starts a new one, a condition fixed once s and the weight type are known.
fn prefill_quarter(s: u32, u: u32, base: ptr<function, array<u32, 4>>,
                   cur: ptr<function, array<vec4<u32>, 4>>, dm: ptr<function, array<vec2<f32>, 4>>,
                   acc: ptr<function, array<f32, 32>>, k4: u32) {
    let pv = payload_vec4s();
    if ((s * pv) % 8u == 0u) {
        for (var r = 0u; r < RG; r++) { (*cur)[r] = w[(*base)[r] + (u * pv + s * pv / 8u) * 8u]; }
    }
    var wv: array<vec4<f32>, 4>;
    for (var r = 0u; r < RG; r++) { wv[r] = raw4((*cur)[r], s) * (*dm)[r].x + (*dm)[r].y; }
    for (var t = 0u; t < TT; t++) {
        let xv = x[t * k4 + u * 8u + s];
        for (var r = 0u; r < RG; r++) { (*acc)[r * TT + t] += dot(wv[r], xv); }
    }
}

@compute @workgroup_size(WGS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32/*SUBGROUP*/) {
    let slot = wid.x * WGS + lid;
    let lane = slot % 8u;
    let g0 = (slot / 8u) * RG;
    let ngroups = (dims.n + 7u) / 8u;
    let t0 = tile.index * TT;
    let tn = min(TT, step.t - t0);
    let units = dims.k / 32u;
    let gv = dims.group_vec4s;
    let tk4 = dims.k / 4u;
    var base: array<u32, 4>;
    for (var r = 0u; r < RG; r++) { base[r] = min(g0 + r, ngroups - 1u) * gv + lane; }
    var acc: array<f32, 32>;    // [r * TT + t]
    for (var u = 0u; u < units; u++) {
        var dm: array<vec2<f32>, 4>;
        for (var r = 0u; r < RG; r++) { dm[r] = scale_dm(scale_word(base[r], units, u)); }
        let xb = u * 8u;
        if (TT == 1u) {
            // decode: the unit's 32 inputs once for all rows; per row d * (raw . x) + m * sum(x)
            // (src/gpu.rs swaps these loads for subgroup broadcasts where subgroups are used)
            let x0 = x[xb]; let x1 = x[xb + 1u]; let x2 = x[xb + 2u]; let x3 = x[xb + 3u];
            let x4 = x[xb + 4u]; let x5 = x[xb + 5u]; let x6 = x[xb + 6u]; let x7 = x[xb + 7u];
            let sx = dot(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7, vec4<f32>(1.0));
            for (var r = 0u; r < RG; r++) {
                let q = unit_raw(base[r], u);
                let a = dot(q.q0, x0) + dot(q.q1, x1) + dot(q.q2, x2) + dot(q.q3, x3)
                      + dot(q.q4, x4) + dot(q.q5, x5) + dot(q.q6, x6) + dot(q.q7, x7);
                acc[r] += dm[r].x * a + dm[r].y * sx;
            }
        } else {
            // prefill: a quarter of the unit (4 weights) at a time for all rows, dequantised once
            // and used for every token of the tile; payload vec4s are loaded as quarters need them
            var cur: array<vec4<u32>, 4>;
            prefill_quarter(0u, u, &base, &cur, &dm, &acc, tk4);
            prefill_quarter(1u, u, &base, &cur, &dm, &acc, tk4);
            prefill_quarter(2u, u, &base, &cur, &dm, &acc, tk4);
            prefill_quarter(3u, u, &base, &cur, &dm, &acc, tk4);
            prefill_quarter(4u, u, &base, &cur, &dm, &acc, tk4);
            prefill_quarter(5u, u, &base, &cur, &dm, &acc, tk4);
            prefill_quarter(6u, u, &base, &cur, &dm, &acc, tk4);
            prefill_quarter(7u, u, &base, &cur, &dm, &acc, tk4);
        }
    }
    for (var r = 0u; r < RG; r++) {
        let g = g0 + r;
        if (g >= ngroups) { continue; }    // (no early return: subgroup operations need them all)
        for (var t = 0u; t < TT; t++) {
            if (t >= tn) { break; }
            let v = acc[r * TT + t];
            if (ROPE) {
                // rotation pairs sit in the same lane of row groups 2j and 2j + 1 (rope.wgsl)
                let n = g * 8u + lane;
                if (r % 2u == 0u && n < dims.n) {
                    var a = v;
                    var b = acc[(r + 1u) * TT + t];
                    if ((dims.flags & 2u) != 0u) {
                        a += bias[n];
                        b += bias[n + 8u];
                    }
                    rope_pair(t0 + t, dims.y_offset + n, a, b);
                }
                continue;
            }
            let row0 = (t0 + t) * dims.y_stride;
            if ((dims.flags & 4u) != 0u) {
                let o = dims.y_offset + (g / 2u) * 8u + lane;
                if (r % 2u == 0u && o < dims.out_n) {
                    y[row0 + o] = v / (1.0 + exp(-v)) * acc[(r + 1u) * TT + t];
                }
                continue;
            }
            let n = g * 8u + lane;
            if (n >= dims.n) { continue; }
            var out = v;
            if ((dims.flags & 2u) != 0u) { out += bias[n]; }
            let i = row0 + dims.y_offset + n;
            if ((dims.flags & 1u) != 0u) { out += y[i]; }
            y[i] = out;
        }
    }
}
