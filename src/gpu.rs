//! The GPU context: adapter and device creation (the only place that knows the platform), the
//! compute pipelines built from shaders/*.wgsl, and buffer creation with memory accounting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::tensor::DType;

const DEQUANT: &str = include_str!("../shaders/dequant.wgsl");
const MATMUL: &str = include_str!("../shaders/matmul.wgsl");
const EMBED: &str = include_str!("../shaders/embed.wgsl");
const RMSNORM: &str = include_str!("../shaders/rmsnorm.wgsl");
const SILU_MUL: &str = include_str!("../shaders/silu_mul.wgsl");
const KV_WRITE: &str = include_str!("../shaders/kv_write.wgsl");
const ATTENTION: &str = include_str!("../shaders/attention.wgsl");

/// The WTYPE override constant dequant.wgsl switches on.
pub fn wtype(d: DType) -> u32 {
    match d {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
        DType::Q8_0 => 3,
        DType::Q4_1 => 4,
    }
}

const DTYPES: [DType; 5] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q4_1,
];

/// Tokens per matmul invocation in the prefill variant (the decode variant takes 1).
pub const MATMUL_TILE: u32 = 8;

pub struct Pipelines {
    /// Per weight type: (decode variant TT=1, prefill variant TT=MATMUL_TILE), same bind layout.
    pub matmul: Vec<(wgpu::ComputePipeline, wgpu::ComputePipeline)>,
    pub embed: Vec<wgpu::ComputePipeline>,
    pub rmsnorm: wgpu::ComputePipeline,
    pub silu_mul: wgpu::ComputePipeline,
    pub kv_write: wgpu::ComputePipeline,
    pub attention: wgpu::ComputePipeline,
}

impl Pipelines {
    pub fn matmul(&self, d: DType) -> &(wgpu::ComputePipeline, wgpu::ComputePipeline) {
        &self.matmul[wtype(d) as usize]
    }
    pub fn embed(&self, d: DType) -> &wgpu::ComputePipeline {
        &self.embed[wtype(d) as usize]
    }
}

/// Device, queue and pipelines, shared by every model and session on this GPU.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    pub pipelines: Pipelines,
    allocated: Arc<AtomicU64>,
    buffers: Arc<AtomicU64>,
}

/// A storage buffer that tells the accounting when it goes away.
pub struct GpuBuffer {
    pub buffer: wgpu::Buffer,
    size: u64,
    allocated: Arc<AtomicU64>,
    buffers: Arc<AtomicU64>,
}

impl std::ops::Deref for GpuBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        self.allocated.fetch_sub(self.size, Ordering::Relaxed);
        self.buffers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(not(target_arch = "wasm32"))]
const NO_ADAPTER_HELP: &str = "no GPU adapter found. sinkstream needs Vulkan, Metal or DX12. On Linux \
without a GPU install software Vulkan: `sudo apt-get install mesa-vulkan-drivers`; with a GPU, install its Vulkan driver.";
#[cfg(target_arch = "wasm32")]
const NO_ADAPTER_HELP: &str = "this browser offers no WebGPU adapter. Use a recent Chrome or Edge (WebGPU is on by \
default), Firefox 141+ on Windows, or Safari 26; on Linux Chrome may need chrome://flags/#enable-unsafe-webgpu.";

impl Gpu {
    /// Opens the default adapter (honours WGPU_BACKEND / WGPU_ADAPTER_NAME natively).
    pub async fn new() -> Result<Gpu> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| Error::gpu(format!("{NO_ADAPTER_HELP} ({e})")))?;
        let info = adapter.get_info();
        let al = adapter.limits();
        // Ask for what the adapter has where it matters (binding sizes, storage buffers per stage);
        // defaults elsewhere.
        let mut limits = wgpu::Limits::downlevel_defaults();
        limits.max_storage_buffer_binding_size = al.max_storage_buffer_binding_size;
        limits.max_buffer_size = al.max_buffer_size;
        limits.max_uniform_buffer_binding_size = al.max_uniform_buffer_binding_size;
        limits.max_storage_buffers_per_shader_stage =
            al.max_storage_buffers_per_shader_stage.min(10);
        limits.max_compute_workgroup_storage_size =
            al.max_compute_workgroup_storage_size.min(32768);
        limits.max_compute_invocations_per_workgroup =
            al.max_compute_invocations_per_workgroup.min(256);
        limits.max_compute_workgroup_size_x = al.max_compute_workgroup_size_x.min(256);
        limits.max_compute_workgroups_per_dimension = al.max_compute_workgroups_per_dimension;
        if limits.max_storage_buffers_per_shader_stage < 7 {
            return Err(Error::gpu(format!(
                "adapter {} allows only {} storage buffers per shader stage; sinkstream needs 7",
                info.name, limits.max_storage_buffers_per_shader_stage
            )));
        }
        let features = adapter.features();
        // Timestamps only serve profiles (`sinkstream bench --profile`); ask where offered.
        let wanted = features & wgpu::Features::TIMESTAMP_QUERY;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("sinkstream"),
                required_features: wanted,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::gpu(format!("could not open the device on {}: {e}", info.name)))?;
        let pipelines = Pipelines::new(&device)?;
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            features,
            pipelines,
            allocated: Arc::new(AtomicU64::new(0)),
            buffers: Arc::new(AtomicU64::new(0)),
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Gpu> {
        pollster::block_on(Gpu::new())
    }

    /// Bytes held in buffers created through this context.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    pub fn buffer_count(&self) -> u64 {
        self.buffers.load(Ordering::Relaxed)
    }

    fn track(&self, buffer: wgpu::Buffer) -> GpuBuffer {
        let size = buffer.size();
        self.allocated.fetch_add(size, Ordering::Relaxed);
        self.buffers.fetch_add(1, Ordering::Relaxed);
        GpuBuffer {
            buffer,
            size,
            allocated: self.allocated.clone(),
            buffers: self.buffers.clone(),
        }
    }

    /// A storage buffer filled with `data` (padded to 4 bytes).
    pub fn storage_init(&self, label: &str, data: &[u8]) -> Result<GpuBuffer> {
        let buffer = self.storage(label, data.len() as u64)?;
        self.write(&buffer, 0, data);
        Ok(buffer)
    }

    /// Writes bytes at `offset`, padding the tail to the 4-byte multiple wgpu requires.
    pub fn write(&self, buffer: &wgpu::Buffer, offset: u64, data: &[u8]) {
        if data.len() % 4 == 0 {
            self.queue.write_buffer(buffer, offset, data);
        } else {
            let mut padded = data.to_vec();
            padded.resize(data.len().div_ceil(4) * 4, 0);
            self.queue.write_buffer(buffer, offset, &padded);
        }
    }

    /// A zeroed storage buffer.
    pub fn storage(&self, label: &str, size: u64) -> Result<GpuBuffer> {
        let size = size.max(4).div_ceil(4) * 4;
        self.check_binding(label, size)?;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Ok(self.track(buffer))
    }

    pub fn uniform(&self, label: &str, data: &[u8]) -> GpuBuffer {
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (data.len() as u64).div_ceil(16) * 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.write(&buffer, 0, data);
        self.track(buffer)
    }

    pub fn readback(&self, label: &str, size: u64) -> GpuBuffer {
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(4).div_ceil(4) * 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.track(buffer)
    }

    fn check_binding(&self, label: &str, size: u64) -> Result<()> {
        let lim = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        if size > lim {
            return Err(Error::gpu(format!(
                "{label} needs a {size}-byte buffer but the adapter {} allows at most {lim} bytes per storage binding (max_storage_buffer_binding_size); use a smaller cache or batch",
                self.info.name
            )));
        }
        Ok(())
    }

    /// The largest storage binding, in bytes, that tensors are split to fit.
    pub fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    pub fn bind_group(
        &self,
        pipeline: &wgpu::ComputePipeline,
        label: &str,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &layout,
            entries: &entries,
        })
    }

    /// A one-line description of the adapter.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?})",
            self.info.name, self.info.backend, self.info.device_type
        )
    }
}

impl Pipelines {
    fn new(device: &wgpu::Device) -> Result<Pipelines> {
        let module = |label: &str, src: String| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            })
        };
        let entry = |binding: u32, ty: wgpu::BufferBindingType| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let ro = wgpu::BufferBindingType::Storage { read_only: true };
        let rw = wgpu::BufferBindingType::Storage { read_only: false };
        let un = wgpu::BufferBindingType::Uniform;
        // An explicit layout so that both matmul variants accept the same bind groups.
        let matmul_bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("matmul"),
            entries: &[
                entry(0, un),
                entry(1, un),
                entry(2, ro),
                entry(3, ro),
                entry(4, rw),
                entry(5, ro),
            ],
        });
        let matmul_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("matmul"),
            bind_group_layouts: &[Some(&matmul_bgl)],
            immediate_size: 0,
        });
        let pipeline_with = |label: &str,
                             layout: Option<&wgpu::PipelineLayout>,
                             m: &wgpu::ShaderModule,
                             constants: &[(&str, f64)]| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout,
                module: m,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
        };
        let pipeline = |label: &str, m: &wgpu::ShaderModule, constants: &[(&str, f64)]| {
            pipeline_with(label, None, m, constants)
        };
        let matmul_m = module("matmul", format!("{MATMUL}\n{DEQUANT}"));
        let embed_m = module("embed", format!("{EMBED}\n{DEQUANT}"));
        let per_type = |m: &wgpu::ShaderModule, label: &str| {
            DTYPES
                .iter()
                .map(|&d| pipeline(label, m, &[("WTYPE", wtype(d) as f64)]))
                .collect::<Vec<_>>()
        };
        let matmul = DTYPES
            .iter()
            .map(|&d| {
                let v = |tt: u32| {
                    pipeline_with(
                        "matmul",
                        Some(&matmul_layout),
                        &matmul_m,
                        &[("WTYPE", wtype(d) as f64), ("TT", tt as f64)],
                    )
                };
                (v(1), v(MATMUL_TILE))
            })
            .collect();
        Ok(Pipelines {
            matmul,
            embed: per_type(&embed_m, "embed"),
            rmsnorm: pipeline("rmsnorm", &module("rmsnorm", RMSNORM.into()), &[]),
            silu_mul: pipeline("silu_mul", &module("silu_mul", SILU_MUL.into()), &[]),
            kv_write: pipeline("kv_write", &module("kv_write", KV_WRITE.into()), &[]),
            attention: pipeline("attention", &module("attention", ATTENTION.into()), &[]),
        })
    }
}
