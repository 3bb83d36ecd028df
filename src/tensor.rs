//! Weight tensors on the host: element types, block layouts, dequantisation for the CPU reference,
//! and the packing the GPU kernels read (still quantised: a kernel dequantises while it multiplies).

use half::{bf16, f16};

use crate::error::{Error, Result};

/// Rows are interleaved in groups of this many on the GPU (one workgroup's worth).
pub const GPU_INTERLEAVE: usize = 64;

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

    /// Bytes of one row of `cols` weights in the GPU layout (Q8_0 blocks padded to 36 bytes so
    /// every block starts on a 4-byte word; half types padded to a whole word).
    pub fn gpu_row_bytes(self, cols: usize) -> usize {
        match self {
            DType::F32 => cols * 4,
            DType::F16 | DType::BF16 => cols.div_ceil(2) * 4,
            DType::Q8_0 => cols / 32 * 36,
            DType::Q4_1 => cols / 32 * 20,
        }
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

    /// Rows [r0, r1) in the GPU layout: each row in its GPU row format (`gpu_row_bytes`), and
    /// rows interleaved word by word in groups of `GPU_INTERLEAVE` (dequant.wgsl explains why);
    /// the last group is padded with zero rows.
    pub fn gpu_bytes(&self, r0: usize, r1: usize) -> Vec<u8> {
        let rows = self.gpu_rows(r0, r1);
        let words = self.dtype.gpu_row_bytes(self.cols) / 4;
        let groups = (r1 - r0).div_ceil(GPU_INTERLEAVE);
        let mut out = vec![0u8; groups * GPU_INTERLEAVE * words * 4];
        for (r, row) in rows.chunks_exact(words * 4).enumerate() {
            let (g, lane) = (r / GPU_INTERLEAVE, r % GPU_INTERLEAVE);
            for (j, word) in row.chunks_exact(4).enumerate() {
                let at = ((g * words + j) * GPU_INTERLEAVE + lane) * 4;
                out[at..at + 4].copy_from_slice(word);
            }
        }
        out
    }

    /// Rows [r0, r1) each in its GPU row format, not interleaved.
    fn gpu_rows(&self, r0: usize, r1: usize) -> Vec<u8> {
        let rb = self.row_bytes();
        let src = &self.data[r0 * rb..r1 * rb];
        match self.dtype {
            DType::F32 | DType::Q4_1 => src.to_vec(),
            DType::F16 | DType::BF16 => {
                let gb = self.dtype.gpu_row_bytes(self.cols);
                let mut out = vec![0u8; (r1 - r0) * gb];
                for (i, row) in src.chunks(rb).enumerate() {
                    out[i * gb..i * gb + rb].copy_from_slice(row);
                }
                out
            }
            DType::Q8_0 => {
                let mut out = Vec::with_capacity(src.len() / 34 * 36);
                for b in src.chunks_exact(34) {
                    out.extend_from_slice(&b[..2]);
                    out.extend_from_slice(&[0, 0]);
                    out.extend_from_slice(&b[2..]);
                }
                out
            }
        }
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
