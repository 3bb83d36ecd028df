// weights.wgsl: reading weight matrices in their GPU layout (src/tensor.rs `gpu_bytes`); appended
// to matmul.wgsl and embed.wgsl when their pipelines are built. The caller declares
// `w: array<vec4<u32>>`.
// Rows come in groups of 8. Each row is a sequence of units of 32 weights; unit u of row r takes
// P vec4s (P = payload_vec4s()) at vec4 `group_base + (u * P + p) * 8 + r % 8`, so the 8 rows of
// a group (8 SIMD lanes) read one unit as 8 consecutive vec4s. Quantised units keep their scale
// word apart: unit u of row r at vec4 `group_base + units * P * 8 + (u / 4) * 8 + r % 8`,
// component u % 4. Weight types (the override WTYPE):
//   0 f32   1 f16   2 bf16 (two per word, low half first; no shader-f16 needed)
//   3 Q8_0  32 x i8 q, scale word f16 d: w = d * q
//   4 Q4_1  16 bytes, byte j = weight j (low nibble) and weight j + 16 (high nibble);
//           scale word f16 d | f16 m << 16: w = d * nibble + m
override WTYPE: u32 = 0u;

fn payload_vec4s() -> u32 {
    switch WTYPE {
        case 0u: { return 8u; }
        case 1u, 2u: { return 4u; }
        case 3u: { return 2u; }
        default: { return 1u; }
    }
}

fn has_scales() -> bool {
    return WTYPE >= 3u;
}

fn bf16x2(v: u32) -> vec2<f32> {
    return bitcast<vec2<f32>>(vec2<u32>(v << 16u, v & 0xffff0000u));
}

fn i8x4(v: u32) -> vec4<f32> {
    // shift each byte to the top, then arithmetic-shift back down: exact signed bytes
    return vec4<f32>((vec4<i32>(bitcast<i32>(v)) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

fn nib4(v: u32, shift: u32) -> vec4<f32> {
    // through i32: the nibbles are small, and a signed conversion is one instruction on CPUs
    // where an unsigned one is not
    return vec4<f32>(bitcast<vec4<i32>>((vec4<u32>(v) >> (vec4<u32>(0u, 8u, 16u, 24u) + shift)) & vec4<u32>(15u)));
}

// A unit's scale word as (d, m): w = d * raw + m for raw values from `raw4` (1, 0 for floats).
fn scale_dm(word: u32) -> vec2<f32> {
    switch WTYPE {
        case 3u: { return vec2<f32>(unpack2x16float(word).x, 0.0); }
        case 4u: { return unpack2x16float(word); }
        default: { return vec2<f32>(1.0, 0.0); }
    }
}

// Raw values of weights 4s .. 4s+3 of a unit (s < 8) from the payload vec4 that holds them,
// number s * P / 8 of the unit: the floats themselves, or the quantised integers as floats.
fn raw4(v: vec4<u32>, s: u32) -> vec4<f32> {
    switch WTYPE {
        case 0u: {
            return bitcast<vec4<f32>>(v);
        }
        case 1u: {
            let j = (s % 2u) * 2u;
            return vec4<f32>(unpack2x16float(v[j]), unpack2x16float(v[j + 1u]));
        }
        case 2u: {
            let j = (s % 2u) * 2u;
            return vec4<f32>(bf16x2(v[j]), bf16x2(v[j + 1u]));
        }
        case 3u: {
            return i8x4(v[s % 4u]);
        }
        default: {
            return nib4(v[s % 4u], (s / 4u) * 4u);
        }
    }
}

// The 32 raw weights of unit u of the row whose first vec4 is `at` (group base + lane), in
// order, each case written out: drivers that vectorise across invocations keep fixed indices in
// registers, while loops over a unit's quarters would spill to memory.
struct Raw { q0: vec4<f32>, q1: vec4<f32>, q2: vec4<f32>, q3: vec4<f32>,
             q4: vec4<f32>, q5: vec4<f32>, q6: vec4<f32>, q7: vec4<f32> }

fn unit_raw(at: u32, u: u32) -> Raw {
    let b = at + u * payload_vec4s() * 8u;
    switch WTYPE {
        case 4u: {
            let q = w[b];
            return Raw(nib4(q.x, 0u), nib4(q.y, 0u), nib4(q.z, 0u), nib4(q.w, 0u),
                       nib4(q.x, 4u), nib4(q.y, 4u), nib4(q.z, 4u), nib4(q.w, 4u));
        }
        case 3u: {
            let q = w[b];
            let r = w[b + 8u];
            return Raw(i8x4(q.x), i8x4(q.y), i8x4(q.z), i8x4(q.w),
                       i8x4(r.x), i8x4(r.y), i8x4(r.z), i8x4(r.w));
        }
        case 1u, 2u: {
            let h0 = w[b];
            let h1 = w[b + 8u];
            let h2 = w[b + 16u];
            let h3 = w[b + 24u];
            return Raw(half4(h0.x, h0.y), half4(h0.z, h0.w), half4(h1.x, h1.y), half4(h1.z, h1.w),
                       half4(h2.x, h2.y), half4(h2.z, h2.w), half4(h3.x, h3.y), half4(h3.z, h3.w));
        }
        default: {
            return Raw(bitcast<vec4<f32>>(w[b]), bitcast<vec4<f32>>(w[b + 8u]),
                       bitcast<vec4<f32>>(w[b + 16u]), bitcast<vec4<f32>>(w[b + 24u]),
                       bitcast<vec4<f32>>(w[b + 32u]), bitcast<vec4<f32>>(w[b + 40u]),
                       bitcast<vec4<f32>>(w[b + 48u]), bitcast<vec4<f32>>(w[b + 56u]));
        }
    }
}

// Four f16 or bf16 weights from two words.
fn half4(a: u32, b: u32) -> vec4<f32> {
    if (WTYPE == 2u) { return vec4<f32>(bf16x2(a), bf16x2(b)); }
    return vec4<f32>(unpack2x16float(a), unpack2x16float(b));
}

// The scale word of unit u of the row at `at` (0 for float types).
fn scale_word(at: u32, units: u32, u: u32) -> u32 {
    if (!has_scales()) { return 0u; }
    return w[at + (units * payload_vec4s() + u / 4u) * 8u][u % 4u];
}
