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
    return vec4<f32>((vec4<u32>(v) >> (vec4<u32>(0u, 8u, 16u, 24u) + shift)) & vec4<u32>(15u));
}

// Which payload vec4 of a unit holds weights 4s .. 4s+3 (s < 8).
fn payload_index(s: u32) -> u32 {
    return s * payload_vec4s() / 8u;
}

// Weights 4s .. 4s+3 of a unit, from the payload vec4 that holds them (`payload_index(s)`) and
// the unit's scale word.
fn weights4(v: vec4<u32>, s: u32, scale: u32) -> vec4<f32> {
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
            return i8x4(v[s % 4u]) * unpack2x16float(scale).x;
        }
        default: {
            let dm = unpack2x16float(scale);
            return nib4(v[s % 4u], (s / 4u) * 4u) * dm.x + dm.y;
        }
    }
}
