//! The runtime's environment and a model read from a `.tflite` file,
//! with the descriptions of its signature's tensors.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char};
use std::path::Path;
use std::ptr;
use std::sync::Arc;

use crate::LiteError;
use crate::api::{
    Api, Handle, MAX_RANK, QUANT_PER_CHANNEL, QUANT_PER_TENSOR, RawLayout, RawPerChannel,
    RawPerTensor, RawRankedType, check,
};

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
    pub(crate) raw: RawRankedType,
}

/// The loaded runtime and its environment.
pub struct Runtime {
    pub(crate) api: Api,
    pub(crate) env: Handle,
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
    pub(crate) rt: Arc<Runtime>,
    pub(crate) handle: Handle,
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
}
