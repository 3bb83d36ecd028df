//! GGUF reader: header, metadata, tensor table and tensor bytes, from an in-memory file.
//! Every count and offset read from the file is checked against the bytes that remain before use.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::tensor::DType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value as stored in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    Array(Vec<Value>),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::Str(_) => "string",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
            Value::Array(_) => "array",
        }
    }

    /// Any integer type that fits in u64 and is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions innermost first, as GGUF lists them.
    pub dims: Vec<u64>,
    pub dtype: DType,
    /// Absolute byte range of the tensor's data within the file.
    pub start: usize,
    pub len: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file. Tensor data is not copied: `tensor_bytes` slices the file.
#[derive(Debug)]
pub struct Gguf {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() as u64 {
            return Err(Error::format(format!(
                "{what} at byte offset {} needs {n} bytes but the file has only {} left (truncated or corrupt file)",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        Ok(s.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let at = self.pos;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::format(format!("{what} at byte offset {at} is not valid UTF-8")))
    }

    /// Checks that `count` items of at least `min_size` bytes each can still fit in the file,
    /// so that no allocation is ever sized by an unchecked count.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<usize> {
        if count.saturating_mul(min_size) > self.remaining() as u64 {
            return Err(Error::format(format!(
                "{what} is {count} at byte offset {}, more than the {} bytes left in the file can hold (corrupt file)",
                self.pos,
                self.remaining()
            )));
        }
        Ok(count as usize)
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => Value::Bool(self.array::<1>(key)?[0] != 0),
            8 => Value::Str(self.string(key)?),
            9 => {
                if depth > 0 {
                    return Err(Error::format(format!(
                        "metadata {key}: nested arrays are not supported"
                    )));
                }
                let elem = self.u32(key)?;
                let count = self.u64(key)?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    other => {
                        return Err(Error::format(format!(
                            "metadata {key}: unknown array element type {other}"
                        )))
                    }
                };
                let n = self.check_count(count, min, &format!("metadata {key} array length"))?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(Error::format(format!(
                    "metadata {key}: unknown value type {other}"
                )))
            }
        })
    }
}

fn ggml_type(code: u32) -> std::result::Result<DType, String> {
    Ok(match code {
        0 => DType::F32,
        1 => DType::F16,
        3 => DType::Q4_1,
        8 => DType::Q8_0,
        30 => DType::BF16,
        other => {
            let name = match other {
                2 => "Q4_0",
                6 => "Q5_0",
                7 => "Q5_1",
                9 => "Q8_1",
                10 => "Q2_K",
                11 => "Q3_K",
                12 => "Q4_K",
                13 => "Q5_K",
                14 => "Q6_K",
                15 => "Q8_K",
                _ => "unknown",
            };
            return Err(format!("{name} (ggml type {other})"));
        }
    })
}

impl Gguf {
    pub fn parse(buf: &[u8]) -> Result<Gguf> {
        if buf.is_empty() {
            return Err(Error::format("the file is empty"));
        }
        if buf.len() < 4 || &buf[..4] != MAGIC {
            return Err(Error::format(
                "not a GGUF file (the first four bytes are not \"GGUF\"); pass a .gguf model or a Hugging Face checkpoint directory",
            ));
        }
        let mut r = Reader { buf, pos: 4 };
        let version = r.u32("GGUF version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::format(format!(
                "GGUF version {version} is not supported (versions 2 and 3 are)"
            )));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor entry at least 8+4+4+8.
        let n_kv = r.check_count(n_kv, 13, "metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let ty = r.u32(&key)?;
            let v = r.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let n_tensors = r.check_count(n_tensors, 24, "tensor count")?;
        struct Raw {
            name: String,
            dims: Vec<u64>,
            dtype: DType,
            offset: u64,
        }
        let mut raw = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32(&name)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(Error::format(format!(
                    "tensor {name}: {n_dims} dimensions (1 to 4 allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&name)?);
            }
            let code = r.u32(&name)?;
            let dtype = ggml_type(code).map_err(|t| {
                Error::format(format!(
                    "tensor {name} has type {t}, which sinkstream does not support (supported: F32, F16, BF16, Q8_0, Q4_1); re-quantise the model to Q4_1 or Q8_0"
                ))
            })?;
            let offset = r.u64(&name)?;
            raw.push(Raw {
                name,
                dims,
                dtype,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(Error::format(format!(
                        "general.alignment {v:?} is not a power of two"
                    )))
                }
            },
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_len = buf.len() as u64;

        let mut tensors = Vec::with_capacity(raw.len());
        for t in raw {
            let absurd =
                || Error::format(format!("tensor {}: absurd dimensions {:?}", t.name, t.dims));
            let n: u64 = t
                .dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n > 0)
                .ok_or_else(absurd)?;
            let block = t.dtype.block_elems() as u64;
            if t.dims[0] % block != 0 {
                return Err(Error::format(format!(
                    "tensor {}: row length {} is not a multiple of the {:?} block size {block}",
                    t.name, t.dims[0], t.dtype
                )));
            }
            // The byte size can overflow where the element count did not (4 bytes per F32); a
            // wrapped size would pass the end-of-file check below with almost no data.
            let len = (n / block)
                .checked_mul(t.dtype.block_bytes() as u64)
                .ok_or_else(absurd)?;
            if t.offset % alignment != 0 {
                return Err(Error::format(format!(
                    "tensor {}: data offset {} is not aligned to {alignment} bytes (corrupt file)",
                    t.name, t.offset
                )));
            }
            let start = data_start.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(len));
            match (start, end) {
                (Some(s), Some(e)) if e <= file_len => tensors.push(TensorInfo {
                    name: t.name,
                    dims: t.dims,
                    dtype: t.dtype,
                    start: s as usize,
                    len: len as usize,
                }),
                _ => {
                    return Err(Error::format(format!(
                        "tensor {}: data at file offset {} + {len} bytes runs past the end of the file ({file_len} bytes); the file is truncated: download it again",
                        t.name,
                        data_start.saturating_add(t.offset)
                    )))
                }
            }
        }
        // Overlapping tensors mean a corrupt table.
        let mut order: Vec<&TensorInfo> = tensors.iter().collect();
        order.sort_by_key(|t| t.start);
        for w in order.windows(2) {
            if w[0].start + w[0].len > w[1].start {
                return Err(Error::format(format!(
                    "tensors {} and {} overlap in the file (corrupt tensor table)",
                    w[0].name, w[1].name
                )));
            }
        }
        let mut names = std::collections::HashSet::new();
        for t in &tensors {
            if !names.insert(t.name.as_str()) {
                return Err(Error::format(format!(
                    "tensor {} appears twice in the tensor table",
                    t.name
                )));
            }
        }
        Ok(Gguf {
            version,
            metadata,
            tensors,
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn wrong_type(key: &str, want: &str, v: &Value) -> Error {
        Error::format(format!(
            "metadata {key} should be {want} but is {}",
            v.type_name()
        ))
    }

    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| Self::wrong_type(key, "a non-negative integer", v)),
        }
    }

    pub fn require_u64(&self, key: &str) -> Result<u64> {
        self.get_u64(key)?
            .ok_or_else(|| Error::format(format!("metadata {key} is missing")))
    }

    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| Self::wrong_type(key, "a number", v)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(v) => Err(Self::wrong_type(key, "a string", v)),
        }
    }

    /// A string array such as tokenizer.ggml.tokens.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Str(s) => Ok(s.as_str()),
                    other => Err(Self::wrong_type(key, "an array of strings", other)),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(Self::wrong_type(key, "an array of strings", v)),
        }
    }

    /// An integer array such as tokenizer.ggml.token_type.
    pub fn get_int_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_i64()
                        .ok_or_else(|| Self::wrong_type(key, "an array of integers", v))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(Self::wrong_type(key, "an array of integers", v)),
        }
    }
}

/// Builders for tests and fuzzing: a minimal GGUF writer.
pub mod write {
    use super::Value;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::Str(s) => string(out, s),
            Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::Array(items) => {
                let elem = items.first().map(type_code).unwrap_or(4);
                out.extend_from_slice(&elem.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for i in items {
                    value(out, i);
                }
            }
        }
    }

    pub fn type_code(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// One tensor to write: name, dims (innermost first), ggml type code, raw bytes.
    pub struct Tensor<'a> {
        pub name: &'a str,
        pub dims: Vec<u64>,
        pub ggml_type: u32,
        pub data: &'a [u8],
    }

    /// Writes a GGUF v3 file with 32-byte alignment.
    pub fn gguf(metadata: &[(&str, Value)], tensors: &[Tensor]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            string(&mut out, k);
            out.extend_from_slice(&type_code(v).to_le_bytes());
            value(&mut out, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in tensors {
            string(&mut out, t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).div_ceil(32) * 32;
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        let base = out.len();
        for (t, off) in tensors.iter().zip(offsets) {
            out.resize(base + off as usize, 0);
            out.extend_from_slice(t.data);
        }
        out
    }
}
