// dequant.wgsl: shared by matmul.wgsl and embed.wgsl (appended to them when the pipelines are
// built). Reads 8 consecutive weights of one row from a weight buffer `w: array<u32>` kept in its
// file format, as two vec4s (so the arithmetic vectorises and nothing is indexed dynamically).
// Rows are interleaved in groups of IL = 64: word j of row n lives at
//   (n / 64) * 64 * row_words + j * 64 + n % 64,
// so the 64 invocations of a workgroup, one row each, read 64 consecutive words together.
// Row formats (the file's blocks, unchanged apart from Q8_0's padding):
//   WTYPE 0 f32   1 word per weight
//   WTYPE 1 f16   2 weights per word (unpack2x16float: no shader-f16 needed)
//   WTYPE 2 bf16  2 weights per word (bf16 is the top half of an f32)
//   WTYPE 3 Q8_0  blocks of 32 padded to 9 words: [f16 d | pad][32 x i8 q]; w = d * q
//   WTYPE 4 Q4_1  blocks of 32 in 5 words: [f16 d | f16 m][16 bytes]; byte j holds weight j
//                 (low nibble) and weight j+16 (high nibble); w = d * nibble + m
override WTYPE: u32 = 0u;

const IL: u32 = 64u;

struct W8 { a: vec4<f32>, b: vec4<f32> }

// The start of row n (relative to its part) in the interleaved layout.
fn row_start(n: u32, row_words: u32) -> u32 {
    return (n / IL) * IL * row_words + n % IL;
}

// Word j of the row that starts at `row`.
fn wat(row: u32, j: u32) -> u32 {
    return w[row + j * IL];
}

fn f32x4(row: u32, j: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(wat(row, j), wat(row, j + 1u), wat(row, j + 2u), wat(row, j + 3u)));
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

// Weights 8u .. 8u+7 of the row that starts at `row` (from row_start).
fn weights8(row: u32, u: u32) -> W8 {
    switch WTYPE {
        case 0u: {
            return W8(f32x4(row, u * 8u), f32x4(row, u * 8u + 4u));
        }
        case 1u: {
            let j = u * 4u;
            return W8(vec4<f32>(unpack2x16float(wat(row, j)), unpack2x16float(wat(row, j + 1u))),
                      vec4<f32>(unpack2x16float(wat(row, j + 2u)), unpack2x16float(wat(row, j + 3u))));
        }
        case 2u: {
            let j = u * 4u;
            return W8(vec4<f32>(bf16x2(wat(row, j)), bf16x2(wat(row, j + 1u))),
                      vec4<f32>(bf16x2(wat(row, j + 2u)), bf16x2(wat(row, j + 3u))));
        }
        case 3u: {
            let base = (u / 4u) * 9u;
            let d = unpack2x16float(wat(row, base)).x;
            let q = base + 1u + (u % 4u) * 2u;
            return W8(i8x4(wat(row, q)) * d, i8x4(wat(row, q + 1u)) * d);
        }
        default: {
            let base = (u / 4u) * 5u;
            let dm = unpack2x16float(wat(row, base));
            let q = base + 1u + (u % 2u) * 2u;  // units 0,2 read bytes 0..7; units 1,3 bytes 8..15
            let shift = (u % 4u / 2u) * 4u;     // units 2,3 take the high nibbles
            return W8(nib4(wat(row, q), shift) * dm.x + dm.y, nib4(wat(row, q + 1u), shift) * dm.x + dm.y);
        }
    }
}
