//! A model compiled for its accelerator, with the input and output
//! buffers every inference reuses.
#![allow(unsafe_code)]

use std::ffi::{CString, c_int, c_void};
use std::ptr;
use std::sync::Arc;

use crate::LiteError;
use crate::api::{Handle, LOCK_READ, LOCK_WRITE, check};
use crate::runtime::{Model, Runtime, TensorDesc};

/// `kLiteRtHwAcceleratorCpu`.
pub const HW_CPU: c_int = 1;
/// GPU accelerator bit.
pub const HW_GPU: c_int = 2;

impl Model {
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
