//! The GPU context: adapter and device creation (the only place that knows the platform), the
//! compute pipelines built from shaders/*.wgsl, and buffer creation with memory accounting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::tensor::DType;

const WEIGHTS: &str = include_str!("../shaders/weights.wgsl");
const KEYS: &str = include_str!("../shaders/keys.wgsl");
const MATMUL: &str = include_str!("../shaders/matmul.wgsl");
const EMBED: &str = include_str!("../shaders/embed.wgsl");
const RMSNORM: &str = include_str!("../shaders/rmsnorm.wgsl");
const SILU_MUL: &str = include_str!("../shaders/silu_mul.wgsl");
const ROPE: &str = include_str!("../shaders/rope.wgsl");
/// matmul.wgsl's epilogue hook where the projection has no RoPE (Kernel::Matmul).
const NO_ROPE: &str = "const ROPE = false;\nfn rope_pair(i: u32, c: u32, a: f32, b: f32) {}\n";
const KV_WRITE: &str = include_str!("../shaders/kv_write.wgsl");
const ATTN_SCORES: &str = include_str!("../shaders/attn_scores.wgsl");
const ATTN_OUT: &str = include_str!("../shaders/attn_out.wgsl");
const ATTN_REDUCE: &str = include_str!("../shaders/attn_reduce.wgsl");
const SELECT: &str = include_str!("../shaders/select.wgsl");

/// The WTYPE override constant weights.wgsl switches on.
pub fn wtype(d: DType) -> u32 {
    match d {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
        DType::Q8_0 => 3,
        DType::Q4_1 => 4,
    }
}

/// The size of the window a kernel reads through a uniform buffer (X of a matmul tile, the
/// queries of an attention tile): WebGPU's guaranteed maximum uniform binding.
pub const UNIFORM_WINDOW: u64 = 65536;

/// The compute kernels, one per file in shaders/.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Kernel {
    Matmul,
    /// The Q/K/V projection with RoPE and the cache staging in its epilogue (rope.wgsl).
    MatmulRope,
    Embed,
    RmsNorm,
    SiluMul,
    KvWrite,
    AttnScores,
    AttnOut,
    /// attn_out.wgsl reading its scores from storage, for caches too large for one window.
    AttnOutWide,
    /// Combines the splits of attn_out.wgsl over long caches.
    AttnReduce,
    Select,
}

/// How a kernel binds one resource.
#[derive(Clone, Copy)]
enum Slot {
    Uniform,
    /// A uniform buffer bound with a dynamic offset (a tile's window).
    UniformDyn,
    Read,
    ReadWrite,
}

/// The decode product's 8 input vec4s of a unit, as matmul.wgsl loads them from its uniform
/// window (every invocation all 8) and as the subgroup variant shares them: invocation l of each
/// 8 loads vec4 l % 8 and subgroupBroadcast hands each to the whole subgroup (sizes of 8 or more).
const X_UNIFORM: &str =
    "let x0 = x[xb]; let x1 = x[xb + 1u]; let x2 = x[xb + 2u]; let x3 = x[xb + 3u];
            let x4 = x[xb + 4u]; let x5 = x[xb + 5u]; let x6 = x[xb + 6u]; let x7 = x[xb + 7u];";
const X_SUBGROUP: &str = "let xl = x[xb + sl % 8u];
            let x0 = subgroupBroadcast(xl, 0u); let x1 = subgroupBroadcast(xl, 1u);
            let x2 = subgroupBroadcast(xl, 2u); let x3 = subgroupBroadcast(xl, 3u);
            let x4 = subgroupBroadcast(xl, 4u); let x5 = subgroupBroadcast(xl, 5u);
            let x6 = subgroupBroadcast(xl, 6u); let x7 = subgroupBroadcast(xl, 7u);";

/// matmul.wgsl, or its subgroup variant (the invocation's subgroup lane `sl` added to main).
pub fn matmul(subgroups: bool) -> String {
    if !subgroups {
        return MATMUL.to_string();
    }
    assert!(MATMUL.contains(X_UNIFORM) && MATMUL.contains("/*SUBGROUP*/"));
    MATMUL
        .replace(X_UNIFORM, X_SUBGROUP)
        .replace("/*SUBGROUP*/", ", @builtin(subgroup_invocation_id) sl: u32")
}

impl Kernel {
    fn source(self, subgroups: bool) -> String {
        match self {
            Kernel::Matmul => format!("{}\n{WEIGHTS}\n{NO_ROPE}", matmul(subgroups)),
            Kernel::MatmulRope => format!("{}\n{WEIGHTS}\n{ROPE}", matmul(subgroups)),
            Kernel::Embed => format!("{EMBED}\n{WEIGHTS}"),
            Kernel::RmsNorm => RMSNORM.into(),
            Kernel::SiluMul => SILU_MUL.into(),
            Kernel::KvWrite => KV_WRITE.into(),
            Kernel::AttnScores => format!("{ATTN_SCORES}\n{KEYS}"),
            Kernel::AttnOut => format!("{ATTN_OUT}\n{KEYS}"),
            Kernel::AttnOutWide => format!(
                "{}\n{KEYS}",
                ATTN_OUT
                    .replace(
                        "var<uniform> sc: array<vec4<f32>, 4096>;",
                        "var<storage, read> sc: array<vec4<f32>>;"
                    )
                    .replace(
                        "return sc[(h * dims.lstride + a) / 4u];",
                        "return sc[((i * dims.n_heads + h) * dims.lstride + a) / 4u];"
                    )
                    .replace("return tile.index;", "return wid.y;")
            ),
            Kernel::AttnReduce => format!("{ATTN_REDUCE}\n{KEYS}"),
            Kernel::Select => SELECT.into(),
        }
    }

    fn slots(self) -> &'static [Slot] {
        use Slot::*;
        match self {
            Kernel::Matmul => &[
                Uniform, Uniform, Read, UniformDyn, ReadWrite, Read, UniformDyn,
            ],
            Kernel::Embed => &[Uniform, Uniform, Read, Read, ReadWrite],
            Kernel::RmsNorm => &[Uniform, Uniform, Read, Read, ReadWrite],
            Kernel::SiluMul => &[Uniform, Uniform, ReadWrite, Read],
            Kernel::MatmulRope => &[
                Uniform, Uniform, Read, UniformDyn, ReadWrite, Read, UniformDyn, Uniform, Read,
                ReadWrite, ReadWrite, ReadWrite,
            ],
            Kernel::KvWrite => &[Uniform, Uniform, ReadWrite, ReadWrite],
            Kernel::AttnScores => &[Uniform, Uniform, UniformDyn, Read, ReadWrite, UniformDyn],
            Kernel::AttnOut => &[Uniform, Uniform, UniformDyn, Read, ReadWrite, UniformDyn],
            Kernel::AttnOutWide => &[Uniform, Uniform, Read, Read, ReadWrite, Uniform],
            Kernel::AttnReduce => &[Uniform, Uniform, Read, ReadWrite],
            Kernel::Select => &[Uniform, ReadWrite, Read, ReadWrite],
        }
    }
}

/// A kernel and its override constants.
type PipelineKey = (Kernel, Vec<(&'static str, u32)>);

/// A built pipeline and the layout its bind groups use.
pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    kernel: Kernel,
}

/// One resource of a bind group: a whole buffer, or a window of one (dynamic uniform slots).
#[derive(Clone, Copy)]
pub enum Bind<'a> {
    Whole(&'a wgpu::Buffer),
    Window(&'a wgpu::Buffer, u64),
}

/// Device, queue and pipelines, shared by every model and session on this GPU.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// The matmul shares its inputs through subgroup broadcasts (native adapters with SUBGROUP
    /// and subgroups of 8 invocations or more; never in browsers).
    pub subgroups: bool,
    modules: Mutex<HashMap<Kernel, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
    allocated: Arc<AtomicU64>,
    buffers: Arc<AtomicU64>,
    /// Buffers, bind groups and pipelines created so far (benchmarks check none are per token).
    created: AtomicU64,
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
    /// Opens the default adapter (honours WGPU_BACKEND / WGPU_ADAPTER_NAME natively), with the
    /// subgroup kernels where the adapter allows them, unless SINKSTREAM_SUBGROUPS=0 (native).
    pub async fn new() -> Result<Gpu> {
        #[cfg(not(target_arch = "wasm32"))]
        let subgroups = std::env::var("SINKSTREAM_SUBGROUPS").as_deref() != Ok("0");
        #[cfg(target_arch = "wasm32")]
        let subgroups = false;
        Gpu::open(subgroups).await
    }

    /// Opens the default adapter; `subgroups: false` keeps to the kernels browsers run.
    pub async fn open(subgroups: bool) -> Result<Gpu> {
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
        if limits.max_uniform_buffer_binding_size < UNIFORM_WINDOW {
            return Err(Error::gpu(format!(
                "adapter {} allows uniform buffers of only {} bytes; sinkstream needs {UNIFORM_WINDOW} (max_uniform_buffer_binding_size)",
                info.name, limits.max_uniform_buffer_binding_size
            )));
        }
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
        // Subgroups speed up the decode matmul where a subgroup holds a whole row block (8).
        let subgroups =
            subgroups && features.contains(wgpu::Features::SUBGROUP) && info.subgroup_min_size >= 8;
        let wanted = features & wgpu::Features::TIMESTAMP_QUERY
            | if subgroups {
                wgpu::Features::SUBGROUP
            } else {
                wgpu::Features::empty()
            };
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
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            features,
            subgroups,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            allocated: Arc::new(AtomicU64::new(0)),
            buffers: Arc::new(AtomicU64::new(0)),
            created: AtomicU64::new(0),
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Gpu> {
        pollster::block_on(Gpu::new())
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_blocking(subgroups: bool) -> Result<Gpu> {
        pollster::block_on(Gpu::open(subgroups))
    }

    /// Bytes held in buffers created through this context.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    pub fn buffer_count(&self) -> u64 {
        self.buffers.load(Ordering::Relaxed)
    }

    /// GPU objects (buffers, bind groups, pipelines) created through this context so far.
    pub fn objects_created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    fn track(&self, buffer: wgpu::Buffer) -> GpuBuffer {
        self.created.fetch_add(1, Ordering::Relaxed);
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

    /// A zeroed buffer of `size` bytes that kernels also read through uniform windows of
    /// `UNIFORM_WINDOW` bytes at any offset inside it (so it carries that much slack).
    pub fn windowed(&self, label: &str, size: u64) -> Result<GpuBuffer> {
        let size = size.div_ceil(4) * 4 + UNIFORM_WINDOW;
        self.check_binding(label, size)?;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::UNIFORM
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

    /// A one-line description of the adapter.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?})",
            self.info.name, self.info.backend, self.info.device_type
        )
    }
}

impl Gpu {
    /// The pipeline of `kernel` with these override constants, built on first use (drivers
    /// compile at creation, so building only what a model needs keeps start-up short).
    pub fn pipeline(&self, kernel: Kernel, constants: &[(&'static str, u32)]) -> Arc<Pipeline> {
        let key = (kernel, constants.to_vec());
        let mut cache = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(&key) {
            return p.clone();
        }
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        let module = modules.entry(kernel).or_insert_with(|| {
            self.device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&format!("{kernel:?}")),
                    source: wgpu::ShaderSource::Wgsl(kernel.source(self.subgroups).into()),
                })
        });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
            .slots()
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let (ty, dynamic) = match slot {
                    Slot::Uniform => (wgpu::BufferBindingType::Uniform, false),
                    Slot::UniformDyn => (wgpu::BufferBindingType::Uniform, true),
                    Slot::Read => (wgpu::BufferBindingType::Storage { read_only: true }, false),
                    Slot::ReadWrite => {
                        (wgpu::BufferBindingType::Storage { read_only: false }, false)
                    }
                };
                wgpu::BindGroupLayoutEntry {
                    binding: i as u32,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty,
                        has_dynamic_offset: dynamic,
                        min_binding_size: None,
                    },
                    count: None,
                }
            })
            .collect();
        let label = format!("{kernel:?}");
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&label),
                entries: &entries,
            });
        let pl = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&label),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let constants: Vec<(&str, f64)> = constants.iter().map(|&(k, v)| (k, v as f64)).collect();
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: Some(&pl),
                module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        self.created.fetch_add(1, Ordering::Relaxed);
        let p = Arc::new(Pipeline {
            pipeline,
            layout,
            kernel,
        });
        cache.insert(key, p.clone());
        p
    }

    /// A bind group for `p`: resources in binding order; dynamic uniform slots take a window.
    pub fn bind(&self, p: &Pipeline, label: &str, resources: &[Bind]) -> wgpu::BindGroup {
        debug_assert_eq!(resources.len(), p.kernel.slots().len());
        self.created.fetch_add(1, Ordering::Relaxed);
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: match r {
                    Bind::Whole(b) => b.as_entire_binding(),
                    Bind::Window(b, size) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: b,
                        offset: 0,
                        size: wgpu::BufferSize::new(*size),
                    }),
                },
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &p.layout,
            entries: &entries,
        })
    }
}
