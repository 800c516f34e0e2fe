//! The LiteRT C API of `libLiteRt.so` (PyPI `ai-edge-litert` 2.3.0),
//! loaded at run time, and safe handles over it. All of this crate's
//! unsafe code is here.
//!
//! Only the functions the worker needs are declared, from the 2.x headers
//! (`litert/c/litert_*.h`): since 2.2 `LiteRtCreateModelFromFile` takes the
//! environment first. Struct layouts are the ABI-stable ones the headers
//! assert (`LiteRtRankedTensorType` is 72 bytes, its layout at offset 4).
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::Path;
use std::ptr;
use std::sync::Arc;

use crate::error::LiteError;

type Status = c_int;
type Handle = *mut c_void;
type ParamIndex = usize;

/// Most dimensions of a ranked tensor.
pub const MAX_RANK: usize = 8;

/// `LiteRtLayout`: `rank:7`, `has_strides:1` bit fields in one 32-bit unit,
/// then dimensions and strides.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RawLayout {
    bits: u32,
    dimensions: [i32; MAX_RANK],
    strides: [u32; MAX_RANK],
}

/// `LiteRtRankedTensorType`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RawRankedType {
    element_type: c_int,
    layout: RawLayout,
}

const _: () = assert!(std::mem::size_of::<RawRankedType>() == 72);

/// `LiteRtQuantizationPerTensor`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct RawPerTensor {
    scale: f32,
    zero_point: i64,
}

/// `LiteRtQuantizationPerChannel`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RawPerChannel {
    quantized_dimension: i32,
    num_channels: u64,
    scales: *mut f32,
    zero_points: *mut i64,
}

const QUANT_PER_TENSOR: c_int = 1;
const QUANT_PER_CHANNEL: c_int = 2;
const LOCK_READ: c_int = 0;
const LOCK_WRITE: c_int = 1;
/// `kLiteRtHwAcceleratorCpu` / `Gpu`.
pub const HW_CPU: c_int = 1;
/// GPU accelerator bit.
pub const HW_GPU: c_int = 2;

/// The functions used, resolved once from the library.
struct Api {
    _lib: libloading::Library,
    create_environment: unsafe extern "C" fn(c_int, *const c_void, *mut Handle) -> Status,
    destroy_environment: unsafe extern "C" fn(Handle),
    create_model_from_file: unsafe extern "C" fn(Handle, *const c_char, *mut Handle) -> Status,
    destroy_model: unsafe extern "C" fn(Handle),
    num_signatures: unsafe extern "C" fn(Handle, *mut ParamIndex) -> Status,
    model_signature: unsafe extern "C" fn(Handle, ParamIndex, *mut Handle) -> Status,
    signature_key: unsafe extern "C" fn(Handle, *mut *const c_char) -> Status,
    num_inputs: unsafe extern "C" fn(Handle, *mut ParamIndex) -> Status,
    num_outputs: unsafe extern "C" fn(Handle, *mut ParamIndex) -> Status,
    input_name: unsafe extern "C" fn(Handle, ParamIndex, *mut *const c_char) -> Status,
    output_name: unsafe extern "C" fn(Handle, ParamIndex, *mut *const c_char) -> Status,
    input_tensor: unsafe extern "C" fn(Handle, ParamIndex, *mut Handle) -> Status,
    output_tensor: unsafe extern "C" fn(Handle, ParamIndex, *mut Handle) -> Status,
    ranked_type: unsafe extern "C" fn(Handle, *mut RawRankedType) -> Status,
    quantization_type: unsafe extern "C" fn(Handle, *mut c_int) -> Status,
    per_tensor: unsafe extern "C" fn(Handle, *mut RawPerTensor) -> Status,
    per_channel: unsafe extern "C" fn(Handle, *mut RawPerChannel) -> Status,
    create_options: unsafe extern "C" fn(*mut Handle) -> Status,
    destroy_options: unsafe extern "C" fn(Handle),
    set_accelerators: unsafe extern "C" fn(Handle, c_int) -> Status,
    create_opaque_options: unsafe extern "C" fn(
        *const c_char,
        *mut c_void,
        Option<unsafe extern "C" fn(*mut c_void)>,
        *mut Handle,
    ) -> Status,
    add_opaque_options: unsafe extern "C" fn(Handle, Handle) -> Status,
    create_compiled_model: unsafe extern "C" fn(Handle, Handle, Handle, *mut Handle) -> Status,
    destroy_compiled_model: unsafe extern "C" fn(Handle),
    input_requirements: unsafe extern "C" fn(Handle, ParamIndex, ParamIndex, *mut Handle) -> Status,
    output_requirements:
        unsafe extern "C" fn(Handle, ParamIndex, ParamIndex, *mut Handle) -> Status,
    create_managed_buffer:
        unsafe extern "C" fn(Handle, *const RawRankedType, Handle, *mut Handle) -> Status,
    destroy_buffer: unsafe extern "C" fn(Handle),
    packed_size: unsafe extern "C" fn(Handle, *mut usize) -> Status,
    lock_buffer: unsafe extern "C" fn(Handle, *mut *mut c_void, c_int) -> Status,
    unlock_buffer: unsafe extern "C" fn(Handle) -> Status,
    run: unsafe extern "C" fn(Handle, ParamIndex, usize, *mut Handle, usize, *mut Handle) -> Status,
}

/// Names of LiteRT status codes (`litert_common.h`).
fn status_name(s: Status) -> &'static str {
    match s {
        1 => "invalid argument",
        2 => "memory allocation failure",
        3 => "runtime failure",
        4 => "missing input tensor",
        5 => "unsupported",
        6 => "not found",
        7 => "timeout expired",
        8 => "wrong version",
        9 => "unknown error",
        10 => "already exists",
        100 => "cancelled",
        500 => "file I/O error",
        501 => "invalid flatbuffer",
        502 => "dynamic loading error",
        503 => "serialization error",
        504 => "compilation error",
        1000 => "index out of bounds",
        _ => "error",
    }
}

/// Turns a status into a result naming the call.
fn check(status: Status, what: &str) -> Result<(), LiteError> {
    if status == 0 {
        Ok(())
    } else {
        Err(LiteError::Runtime(format!(
            "{what}: LiteRT status {status} ({})",
            status_name(status)
        )))
    }
}

/// Resolves one symbol as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the function's true C signature.
unsafe fn symbol<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, LiteError> {
    // SAFETY: the caller guarantees `T` matches the symbol's C signature;
    // the pointer is used only while `lib` stays loaded (it lives in `Api`).
    let sym = unsafe { lib.get::<T>(name.as_bytes()) };
    sym.map(|s| *s)
        .map_err(|e| LiteError::Runtime(format!("libLiteRt.so lacks {name}: {e}")))
}

impl Api {
    fn load(path: &Path) -> Result<Api, LiteError> {
        // SAFETY: loading runs the library's initialisers; libLiteRt.so is
        // the vendor's runtime library, loaded once per process.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
            LiteError::Runtime(format!(
                "cannot load the LiteRT runtime {}: {e}",
                path.display()
            ))
        })?;
        macro_rules! f {
            ($name:literal) => {
                // SAFETY: each field's type is the C signature of the named
                // function in the LiteRT 2.x headers.
                unsafe { symbol(&lib, $name)? }
            };
        }
        Ok(Api {
            create_environment: f!("LiteRtCreateEnvironment"),
            destroy_environment: f!("LiteRtDestroyEnvironment"),
            create_model_from_file: f!("LiteRtCreateModelFromFile"),
            destroy_model: f!("LiteRtDestroyModel"),
            num_signatures: f!("LiteRtGetNumModelSignatures"),
            model_signature: f!("LiteRtGetModelSignature"),
            signature_key: f!("LiteRtGetSignatureKey"),
            num_inputs: f!("LiteRtGetNumSignatureInputs"),
            num_outputs: f!("LiteRtGetNumSignatureOutputs"),
            input_name: f!("LiteRtGetSignatureInputName"),
            output_name: f!("LiteRtGetSignatureOutputName"),
            input_tensor: f!("LiteRtGetSignatureInputTensorByIndex"),
            output_tensor: f!("LiteRtGetSignatureOutputTensorByIndex"),
            ranked_type: f!("LiteRtGetRankedTensorType"),
            quantization_type: f!("LiteRtGetQuantizationTypeId"),
            per_tensor: f!("LiteRtGetPerTensorQuantization"),
            per_channel: f!("LiteRtGetPerChannelQuantization"),
            create_options: f!("LiteRtCreateOptions"),
            destroy_options: f!("LiteRtDestroyOptions"),
            set_accelerators: f!("LiteRtSetOptionsHardwareAccelerators"),
            create_opaque_options: f!("LiteRtCreateOpaqueOptions"),
            add_opaque_options: f!("LiteRtAddOpaqueOptions"),
            create_compiled_model: f!("LiteRtCreateCompiledModel"),
            destroy_compiled_model: f!("LiteRtDestroyCompiledModel"),
            input_requirements: f!("LiteRtGetCompiledModelInputBufferRequirements"),
            output_requirements: f!("LiteRtGetCompiledModelOutputBufferRequirements"),
            create_managed_buffer: f!("LiteRtCreateManagedTensorBufferFromRequirements"),
            destroy_buffer: f!("LiteRtDestroyTensorBuffer"),
            packed_size: f!("LiteRtGetTensorBufferPackedSize"),
            lock_buffer: f!("LiteRtLockTensorBuffer"),
            unlock_buffer: f!("LiteRtUnlockTensorBuffer"),
            run: f!("LiteRtRunCompiledModel"),
            _lib: lib,
        })
    }
}

/// A LiteRT element type, as the runtime numbers it (TfLiteType values).
pub type ElementType = i32;

/// Quantization parameters of a tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Quant {
    /// One per channel, or one.
    pub scale: Vec<f32>,
    /// Same length as `scale`.
    pub zero_point: Vec<i64>,
    /// Axis of per-channel quantization.
    pub dimension: i32,
}

/// A model input or output as the runtime describes it.
#[derive(Debug, Clone)]
pub struct TensorDesc {
    /// Signature name.
    pub name: String,
    /// LiteRT element type.
    pub element_type: ElementType,
    /// Dimensions (negative: dynamic).
    pub shape: Vec<i32>,
    /// Quantization, if any.
    pub quant: Option<Quant>,
    raw: RawRankedType,
}

/// The loaded runtime and its environment.
pub struct Runtime {
    api: Api,
    env: Handle,
    /// Serialises every call that uses the environment.
    lock: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

// SAFETY: LiteRT environments are not tied to the thread that made them;
// the function table is immutable after loading.
unsafe impl Send for Runtime {}
// SAFETY: shared use goes through `&Runtime`, whose only method touching
// the environment (`model`) holds `lock`; the rest is immutable.
unsafe impl Sync for Runtime {}

impl Drop for Runtime {
    fn drop(&mut self) {
        // SAFETY: `env` came from LiteRtCreateEnvironment and is destroyed
        // once; every model and compiled model holds an `Arc<Runtime>`, so
        // none outlives it.
        unsafe { (self.api.destroy_environment)(self.env) }
    }
}

impl Runtime {
    /// Loads `libLiteRt.so` and makes an environment.
    pub fn load(path: &Path) -> Result<Arc<Runtime>, LiteError> {
        let api = Api::load(path)?;
        let mut env = ptr::null_mut();
        // SAFETY: no options (count 0, null array); `env` is a valid out
        // pointer.
        let status = unsafe { (api.create_environment)(0, ptr::null(), &mut env) };
        check(status, "create environment")?;
        Ok(Arc::new(Runtime {
            api,
            env,
            lock: std::sync::Mutex::new(()),
        }))
    }

    /// Reads a `.tflite` file.
    pub fn model(self: &Arc<Self>, path: &Path) -> Result<Model, LiteError> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| LiteError::Invalid("model path contains a NUL byte".into()))?;
        let mut model = ptr::null_mut();
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: `env` is live, `c` is a NUL-terminated path, `model` a
        // valid out pointer.
        let status = unsafe { (self.api.create_model_from_file)(self.env, c.as_ptr(), &mut model) };
        check(status, &format!("read {}", path.display()))?;
        Ok(Model {
            rt: self.clone(),
            handle: model,
        })
    }
}

/// A `.tflite` model read by the runtime.
pub struct Model {
    rt: Arc<Runtime>,
    handle: Handle,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").finish_non_exhaustive()
    }
}

// SAFETY: as for `Runtime`: one owner thread at a time.
unsafe impl Send for Model {}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: `handle` came from LiteRtCreateModelFromFile; destroyed
        // once, after any compiled model made from it (they hold an Arc).
        unsafe { (self.rt.api.destroy_model)(self.handle) }
    }
}

/// A borrowed C string, or empty.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string alive for this call.
unsafe fn c_str(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: non-null and NUL-terminated per the caller.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

impl Model {
    /// The first signature: its key, inputs and outputs.
    pub fn signature(&self) -> Result<(String, Vec<TensorDesc>, Vec<TensorDesc>), LiteError> {
        let api = &self.rt.api;
        let mut count = 0usize;
        // SAFETY: live model handle, valid out pointer.
        let status = unsafe { (api.num_signatures)(self.handle, &mut count) };
        check(status, "signatures")?;
        if count == 0 {
            return Err(LiteError::Runtime("the model has no signature".into()));
        }
        let mut sig = ptr::null_mut();
        // SAFETY: index 0 < count; valid out pointer.
        let status = unsafe { (api.model_signature)(self.handle, 0, &mut sig) };
        check(status, "signature 0")?;
        let mut key = ptr::null();
        // SAFETY: `sig` is owned by the model and alive; valid out pointer.
        let status = unsafe { (api.signature_key)(sig, &mut key) };
        check(status, "signature key")?;
        // SAFETY: the key string lives as long as the model.
        let key = unsafe { c_str(key) };
        let (mut n_in, mut n_out) = (0usize, 0usize);
        // SAFETY: live signature, valid out pointers.
        let status = unsafe { (api.num_inputs)(sig, &mut n_in) };
        check(status, "input count")?;
        // SAFETY: as above.
        let status = unsafe { (api.num_outputs)(sig, &mut n_out) };
        check(status, "output count")?;
        let mut inputs = Vec::with_capacity(n_in);
        for i in 0..n_in {
            inputs.push(self.describe(sig, i, true)?);
        }
        let mut outputs = Vec::with_capacity(n_out);
        for i in 0..n_out {
            outputs.push(self.describe(sig, i, false)?);
        }
        Ok((key, inputs, outputs))
    }

    fn describe(&self, sig: Handle, i: usize, input: bool) -> Result<TensorDesc, LiteError> {
        let api = &self.rt.api;
        let (name_fn, tensor_fn) = if input {
            (api.input_name, api.input_tensor)
        } else {
            (api.output_name, api.output_tensor)
        };
        let mut name = ptr::null();
        let mut tensor = ptr::null_mut();
        // SAFETY: live signature, i < its count, valid out pointers.
        let status = unsafe { name_fn(sig, i, &mut name) };
        check(status, "tensor name")?;
        // SAFETY: as above.
        let status = unsafe { tensor_fn(sig, i, &mut tensor) };
        check(status, "tensor")?;
        // SAFETY: the name lives as long as the model.
        let name = unsafe { c_str(name) };
        let mut raw = RawRankedType {
            element_type: 0,
            layout: RawLayout {
                bits: 0,
                dimensions: [0; MAX_RANK],
                strides: [0; MAX_RANK],
            },
        };
        // SAFETY: live tensor; `raw` has the header's 72-byte layout.
        let status = unsafe { (api.ranked_type)(tensor, &mut raw) };
        check(
            status,
            &format!("type of tensor {name:?} (unranked tensors are not served)"),
        )?;
        let rank = (raw.layout.bits & 0x7f) as usize;
        if rank > MAX_RANK {
            return Err(LiteError::Runtime(format!(
                "tensor {name:?} has rank {rank}"
            )));
        }
        let shape = raw.layout.dimensions[..rank].to_vec();
        Ok(TensorDesc {
            quant: self.quantization(tensor)?,
            name,
            element_type: raw.element_type,
            shape,
            raw,
        })
    }

    fn quantization(&self, tensor: Handle) -> Result<Option<Quant>, LiteError> {
        let api = &self.rt.api;
        let mut kind = 0;
        // SAFETY: live tensor, valid out pointer.
        let status = unsafe { (api.quantization_type)(tensor, &mut kind) };
        check(status, "quantization")?;
        match kind {
            QUANT_PER_TENSOR => {
                let mut q = RawPerTensor::default();
                // SAFETY: live tensor with per-tensor quantization; `q`
                // has the header's 16-byte layout.
                let status = unsafe { (api.per_tensor)(tensor, &mut q) };
                check(status, "per-tensor quantization")?;
                Ok(Some(Quant {
                    scale: vec![q.scale],
                    zero_point: vec![q.zero_point],
                    dimension: 0,
                }))
            }
            QUANT_PER_CHANNEL => {
                let mut q = RawPerChannel {
                    quantized_dimension: 0,
                    num_channels: 0,
                    scales: ptr::null_mut(),
                    zero_points: ptr::null_mut(),
                };
                // SAFETY: live tensor with per-channel quantization; `q`
                // has the header's 32-byte layout.
                let status = unsafe { (api.per_channel)(tensor, &mut q) };
                check(status, "per-channel quantization")?;
                let n = q.num_channels as usize;
                let (scale, zero_point) = if n == 0 || q.scales.is_null() || q.zero_points.is_null()
                {
                    (Vec::new(), Vec::new())
                } else {
                    // SAFETY: LiteRT returns `num_channels` scales, owned by
                    // the model and alive for this call.
                    let scales = unsafe { std::slice::from_raw_parts(q.scales, n) }.to_vec();
                    // SAFETY: as above, for the zero points.
                    let zeros = unsafe { std::slice::from_raw_parts(q.zero_points, n) }.to_vec();
                    (scales, zeros)
                };
                Ok(Some(Quant {
                    scale,
                    zero_point,
                    dimension: q.quantized_dimension,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Compiles the model for the accelerators in `hw` (`HW_CPU`,
    /// `HW_GPU`) with `threads` XNNPACK threads.
    pub fn compile(self, hw: c_int, threads: u32) -> Result<Compiled, LiteError> {
        let (key, inputs, outputs) = self.signature()?;
        let api = &self.rt.api;
        let mut opts = ptr::null_mut();
        // SAFETY: valid out pointer.
        let status = unsafe { (api.create_options)(&mut opts) };
        check(status, "options")?;
        let options = Options {
            rt: self.rt.clone(),
            handle: opts,
        };
        // SAFETY: live options handle.
        let status = unsafe { (api.set_accelerators)(options.handle, hw) };
        check(status, "accelerators")?;
        // XNNPACK's thread count travels as opaque options: identifier
        // "xnnpack", payload the text `num_threads = N\n`, freed by LiteRT
        // through `free_cstring`.
        let payload = CString::new(format!("num_threads = {}\n", threads.max(1)))
            .map_err(|_| LiteError::Invalid("threads".into()))?
            .into_raw();
        let mut opaque = ptr::null_mut();
        // SAFETY: the identifier is a static NUL-terminated string; the
        // payload is ours and handed over with its destructor.
        let status = unsafe {
            (api.create_opaque_options)(
                c"xnnpack".as_ptr(),
                payload.cast(),
                Some(free_cstring),
                &mut opaque,
            )
        };
        if status != 0 {
            // SAFETY: LiteRT did not take the payload; it came from
            // CString::into_raw above.
            unsafe { free_cstring(payload.cast()) };
            check(status, "XNNPACK options")?;
        }
        // SAFETY: both handles are live; the options list takes ownership
        // of `opaque`.
        let status = unsafe { (api.add_opaque_options)(options.handle, opaque) };
        check(status, "XNNPACK options")?;
        let mut compiled = ptr::null_mut();
        // SAFETY: live environment, model and options; valid out pointer.
        let status = unsafe {
            (api.create_compiled_model)(self.rt.env, self.handle, options.handle, &mut compiled)
        };
        check(status, "compile the model")?;
        let mut c = Compiled {
            rt: self.rt.clone(),
            handle: compiled,
            inputs: Vec::new(),
            outputs: Vec::new(),
            _options: options.handle,
            _model: self,
            signature: key,
            input_desc: inputs,
            output_desc: outputs,
        };
        std::mem::forget(options);
        c.make_buffers()?;
        Ok(c)
    }
}

/// Frees an opaque-options payload made by `CString::into_raw`.
unsafe extern "C" fn free_cstring(p: *mut c_void) {
    if !p.is_null() {
        // SAFETY: every payload handed to LiteRT came from CString::into_raw.
        drop(unsafe { CString::from_raw(p.cast()) });
    }
}

/// Options not yet owned by a compiled model.
struct Options {
    rt: Arc<Runtime>,
    handle: Handle,
}

impl Drop for Options {
    fn drop(&mut self) {
        // SAFETY: the handle came from LiteRtCreateOptions and was not
        // handed on (on success it is forgotten and kept by `Compiled`).
        unsafe { (self.rt.api.destroy_options)(self.handle) }
    }
}

/// A model compiled for its accelerator, with one input and one output
/// buffer per tensor, reused by every inference.
pub struct Compiled {
    rt: Arc<Runtime>,
    handle: Handle,
    inputs: Vec<Handle>,
    outputs: Vec<Handle>,
    _options: Handle,
    _model: Model,
    /// Signature key.
    pub signature: String,
    /// Inputs in signature order.
    pub input_desc: Vec<TensorDesc>,
    /// Outputs in signature order.
    pub output_desc: Vec<TensorDesc>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("signature", &self.signature)
            .field("inputs", &self.input_desc)
            .field("outputs", &self.output_desc)
            .finish_non_exhaustive()
    }
}

// SAFETY: as for `Runtime`: one owner thread at a time.
unsafe impl Send for Compiled {}

impl Drop for Compiled {
    fn drop(&mut self) {
        let api = &self.rt.api;
        for b in self.inputs.drain(..).chain(self.outputs.drain(..)) {
            // SAFETY: each buffer came from
            // LiteRtCreateManagedTensorBufferFromRequirements, destroyed once.
            unsafe { (api.destroy_buffer)(b) }
        }
        // SAFETY: destroyed once, before its options and model.
        unsafe { (api.destroy_compiled_model)(self.handle) }
        // SAFETY: the options outlive the compiled model made with them.
        unsafe { (api.destroy_options)(self._options) }
    }
}

impl Compiled {
    fn make_buffers(&mut self) -> Result<(), LiteError> {
        let api = &self.rt.api;
        for (input, descs) in [(true, &self.input_desc), (false, &self.output_desc)] {
            for (i, d) in descs.iter().enumerate() {
                let mut req = ptr::null_mut();
                let f = if input {
                    api.input_requirements
                } else {
                    api.output_requirements
                };
                // SAFETY: live compiled model, signature 0, i < count; the
                // requirements belong to the compiled model.
                let status = unsafe { f(self.handle, 0, i, &mut req) };
                check(status, &format!("buffer requirements of {:?}", d.name))?;
                let mut buf = ptr::null_mut();
                // SAFETY: live environment and requirements; `d.raw` is the
                // tensor's type as LiteRT reported it.
                let status =
                    unsafe { (api.create_managed_buffer)(self.rt.env, &d.raw, req, &mut buf) };
                check(status, &format!("buffer of {:?}", d.name))?;
                if input {
                    self.inputs.push(buf);
                } else {
                    self.outputs.push(buf);
                }
            }
        }
        Ok(())
    }

    /// Bytes of input `i`'s buffer.
    pub fn input_bytes(&self, i: usize) -> Result<usize, LiteError> {
        self.packed(self.inputs[i])
    }

    /// Bytes of output `i`'s buffer.
    pub fn output_bytes(&self, i: usize) -> Result<usize, LiteError> {
        self.packed(self.outputs[i])
    }

    fn packed(&self, b: Handle) -> Result<usize, LiteError> {
        let mut n = 0usize;
        // SAFETY: live buffer, valid out pointer.
        let status = unsafe { (self.rt.api.packed_size)(b, &mut n) };
        check(status, "buffer size")?;
        Ok(n)
    }

    /// Writes input `i`: `fill` gets the locked buffer.
    pub fn write_input(&mut self, i: usize, fill: impl FnOnce(&mut [u8])) -> Result<(), LiteError> {
        let b = self.inputs[i];
        let n = self.packed(b)?;
        let mut addr = ptr::null_mut();
        // SAFETY: live buffer, valid out pointer.
        let status = unsafe { (self.rt.api.lock_buffer)(b, &mut addr, LOCK_WRITE) };
        check(status, "lock input")?;
        if !addr.is_null() {
            // SAFETY: a locked host buffer of `n` bytes, exclusively ours
            // until unlocked.
            fill(unsafe { std::slice::from_raw_parts_mut(addr.cast::<u8>(), n) });
        }
        // SAFETY: locked above.
        let status = unsafe { (self.rt.api.unlock_buffer)(b) };
        check(status, "unlock input")
    }

    /// Reads output `i`: `read` gets the locked buffer.
    pub fn read_output<T>(&self, i: usize, read: impl FnOnce(&[u8]) -> T) -> Result<T, LiteError> {
        let b = self.outputs[i];
        let n = self.packed(b)?;
        let mut addr = ptr::null_mut();
        // SAFETY: live buffer, valid out pointer.
        let status = unsafe { (self.rt.api.lock_buffer)(b, &mut addr, LOCK_READ) };
        check(status, "lock output")?;
        let out = if addr.is_null() {
            read(&[])
        } else {
            // SAFETY: a locked host buffer of `n` bytes, not written while
            // locked for reading.
            read(unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), n) })
        };
        // SAFETY: locked above.
        let status = unsafe { (self.rt.api.unlock_buffer)(b) };
        check(status, "unlock output")?;
        Ok(out)
    }

    /// Runs the model on the input buffers into the output buffers.
    pub fn run(&mut self) -> Result<(), LiteError> {
        // SAFETY: live compiled model; the buffer arrays hold one live
        // buffer per signature input and output, in order.
        let status = unsafe {
            (self.rt.api.run)(
                self.handle,
                0,
                self.inputs.len(),
                self.inputs.as_mut_ptr(),
                self.outputs.len(),
                self.outputs.as_mut_ptr(),
            )
        };
        check(status, "run")
    }
}
