//! Weight tensors on the host: element types, block layouts, dequantisation for the CPU reference,
//! and the packing the GPU kernels read (still quantised: a kernel dequantises while it multiplies).

use half::{bf16, f16};

use crate::error::{Error, Result};

/// Rows are stored on the GPU in groups of this many, interleaved vec4 by vec4, so that the
/// invocations of one SIMD group (one row each) read consecutive memory (shaders/matmul.wgsl).
pub const GPU_GROUP: usize = 8;
/// Weights per unit: a quantisation block, or 32 plain floats.
pub const GPU_UNIT: usize = 32;

#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// 32 weights: f16 scale d, 32 x i8 q; w = d * q.
    Q8_0,
    /// 32 weights: f16 d, f16 m, 16 bytes of nibbles; w[j] = d * (qs[j] & 15) + m, w[j+16] = d * (qs[j] >> 4) + m.
    Q4_1,
}

impl DType {
    pub fn block_elems(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q8_0 | DType::Q4_1 => 32,
        }
    }

    /// Bytes of one block in the file.
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_1 => 20,
        }
    }

    /// vec4<u32> words per unit of 32 weights of one row in the GPU layout (the weights
    /// themselves; a quantised unit's scale lives in a separate word, see `gpu_scale_words`).
    pub fn gpu_payload_vec4s(self) -> usize {
        match self {
            DType::F32 => 8,
            DType::F16 | DType::BF16 => 4,
            DType::Q8_0 => 2,
            DType::Q4_1 => 1,
        }
    }

    /// Whether units carry a 32-bit scale word (Q8_0: f16 d; Q4_1: f16 d | f16 m << 16).
    pub fn gpu_has_scales(self) -> bool {
        matches!(self, DType::Q8_0 | DType::Q4_1)
    }

    /// Bytes per row in the GPU layout (a group's bytes over its rows).
    pub fn gpu_row_bytes(self, cols: usize) -> usize {
        self.gpu_group_vec4s(cols) * 16 / GPU_GROUP
    }

    /// vec4<u32> words of one group of `GPU_GROUP` rows of `cols` weights (cols % 32 == 0).
    pub fn gpu_group_vec4s(self, cols: usize) -> usize {
        let units = cols / GPU_UNIT;
        let scales = if self.gpu_has_scales() {
            units.div_ceil(4)
        } else {
            0
        };
        (units * self.gpu_payload_vec4s() + scales) * GPU_GROUP
    }
}

/// A 2-D weight matrix (`rows` x `cols`, row-major, rows = output features) or a vector (rows = 1).
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub name: String,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    /// Raw bytes in the file's layout.
    pub data: Vec<u8>,
}

impl HostTensor {
    pub fn from_f32(name: &str, rows: usize, cols: usize, values: &[f32]) -> HostTensor {
        assert_eq!(values.len(), rows * cols);
        HostTensor {
            name: name.to_string(),
            dtype: DType::F32,
            rows,
            cols,
            data: bytemuck::cast_slice(values).to_vec(),
        }
    }

    pub fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_elems() * self.dtype.block_bytes()
    }

    /// Dequantises one row into `out` (length cols).
    pub fn dequant_row(&self, row: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        let src = &self.data[row * rb..(row + 1) * rb];
        dequant(self.dtype, src, out);
    }

    /// The whole tensor as f32 (for the CPU reference).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for r in 0..self.rows {
            self.dequant_row(r, &mut out[r * self.cols..(r + 1) * self.cols]);
        }
        out
    }

    /// Rows [r0, r1) in the GPU layout that shaders/matmul.wgsl and embed.wgsl read. Rows come in
    /// groups of `GPU_GROUP` (the last padded with zero rows); within a group, unit u (32 weights)
    /// of row r takes `P = gpu_payload_vec4s` vec4<u32> at vec4 index `(u * P + p) * 8 + r % 8`
    /// (the unit's bytes as in the file, without its scale), and for quantised types the units'
    /// scale words follow: unit u of row r at vec4 `units * P * 8 + (u / 4) * 8 + r % 8`,
    /// component `u % 4`. So the 8 rows of a group read one unit as 8 consecutive vec4s.
    /// `cols` must be a multiple of 32 (`check_gpu_shape`).
    pub fn gpu_bytes(&self, r0: usize, r1: usize) -> Vec<u8> {
        let g = GPU_GROUP;
        let units = self.cols / GPU_UNIT;
        let p = self.dtype.gpu_payload_vec4s();
        let gv = self.dtype.gpu_group_vec4s(self.cols);
        let rb = self.row_bytes();
        let groups = (r1 - r0).div_ceil(g);
        let mut out = vec![0u32; groups * gv * 4];
        let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        for r in 0..r1 - r0 {
            let row = &self.data[(r0 + r) * rb..(r0 + r + 1) * rb];
            let base = (r / g) * gv;
            let lane = r % g;
            for u in 0..units {
                // the unit's payload words and its scale word
                let (payload, scale): (Vec<u32>, u32) = match self.dtype {
                    DType::F32 => (
                        row[u * 128..u * 128 + 128]
                            .chunks_exact(4)
                            .map(word)
                            .collect(),
                        0,
                    ),
                    DType::F16 | DType::BF16 => (
                        row[u * 64..u * 64 + 64].chunks_exact(4).map(word).collect(),
                        0,
                    ),
                    DType::Q8_0 => {
                        let b = &row[u * 34..u * 34 + 34];
                        let d = u16::from_le_bytes([b[0], b[1]]) as u32;
                        (b[2..].chunks_exact(4).map(word).collect(), d)
                    }
                    DType::Q4_1 => {
                        let b = &row[u * 20..u * 20 + 20];
                        (b[4..].chunks_exact(4).map(word).collect(), word(&b[..4]))
                    }
                };
                for (j, w) in payload.iter().enumerate() {
                    let v4 = base + (u * p + j / 4) * g + lane;
                    out[v4 * 4 + j % 4] = *w;
                }
                if self.dtype.gpu_has_scales() {
                    let v4 = base + units * p * g + (u / 4) * g + lane;
                    out[v4 * 4 + u % 4] = scale;
                }
            }
        }
        bytemuck::cast_slice(&out).to_vec()
    }

    /// The GPU kernels read weights in units of 32: every matrix width must be a multiple.
    pub fn check_gpu_shape(&self) -> Result<()> {
        if self.cols % GPU_UNIT != 0 {
            return Err(Error::format(format!(
                "tensor {}: {} columns; sinkstream's GPU kernels need matrix widths that are multiples of {GPU_UNIT}",
                self.name, self.cols
            )));
        }
        Ok(())
    }

    /// Checks the byte length against the shape.
    pub fn validate(&self) -> Result<()> {
        if self.cols % self.dtype.block_elems() != 0 {
            return Err(Error::format(format!(
                "tensor {}: {} columns is not a multiple of the {:?} block size",
                self.name, self.cols, self.dtype
            )));
        }
        if self.data.len() != self.rows * self.row_bytes() {
            return Err(Error::format(format!(
                "tensor {}: {} bytes of data for a {}x{} {:?} tensor (expected {})",
                self.name,
                self.data.len(),
                self.rows,
                self.cols,
                self.dtype,
                self.rows * self.row_bytes()
            )));
        }
        Ok(())
    }
}

pub fn dequant(dtype: DType, src: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(src.chunks_exact(34)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                for j in 0..32 {
                    o[j] = d * (b[2 + j] as i8) as f32;
                }
            }
        }
        DType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(src.chunks_exact(20)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                let m = f16::from_le_bytes([b[2], b[3]]).to_f32();
                for j in 0..16 {
                    o[j] = d * (b[4 + j] & 15) as f32 + m;
                    o[j + 16] = d * (b[4 + j] >> 4) as f32 + m;
                }
            }
        }
    }
}

/// Quantisers, used by tests to build small models in every format the kernels read.
pub mod quant {
    use half::{bf16, f16};

    pub fn q8_0(values: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for blk in values.chunks_exact(32) {
            let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            for v in blk {
                out.push((v * inv).round().clamp(-127.0, 127.0) as i8 as u8);
            }
        }
        out
    }

    pub fn q4_1(values: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for blk in values.chunks_exact(32) {
            let min = blk.iter().cloned().fold(f32::INFINITY, f32::min);
            let max = blk.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let d = (max - min) / 15.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
            for j in 0..16 {
                let lo = ((blk[j] - min) * inv).round().clamp(0.0, 15.0) as u8;
                let hi = ((blk[j + 16] - min) * inv).round().clamp(0.0, 15.0) as u8;
                out.push(lo | (hi << 4));
            }
        }
        out
    }

    pub fn f16s(values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect()
    }

    pub fn bf16s(values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect()
    }
}
