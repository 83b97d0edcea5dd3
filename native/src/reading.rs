//! The PyO3 boundary of the read path: a file read in chunks, the record splitter, and the
//! batches of records it makes, which Python carries from the reader to the storage client
//! without ever touching their bytes.
//!
//! `ReadFile.read` fills a pooled buffer (the GIL released); `Splitter.feed` takes that buffer
//! over and returns the pieces it completes, a batch being the same buffer (`Records`);
//! `StorageClient.submit` moves a `Records` into its write. Python's work per chunk is a few
//! calls, whatever the chunk holds.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffers::{self, Part};
use crate::split::{self, Piece};

/// Locks `m`; a panic while holding it left plain data behind, so go on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An `OSError` of the right subclass (FileNotFoundError, PermissionError, ...) naming `path`.
fn os_error(err: &io::Error, path: &Path) -> PyErr {
    match err.raw_os_error() {
        Some(code) => {
            // Python's own wording: the message without Rust's " (os error N)".
            let text = err.to_string();
            let strerror = text.split(" (os error").next().unwrap_or(&text).to_owned();
            PyOSError::new_err((code, strerror, path.as_os_str().to_owned()))
        }
        None => PyOSError::new_err(format!("{}: {err}", path.display())),
    }
}

fn closed_error() -> PyErr {
    PyValueError::new_err("I/O operation on a closed ReadFile")
}

/// A bytes chunk read from a file: its buffer, not yet split.
#[pyclass(frozen, module = "shovel._native")]
pub struct Chunk {
    part: Mutex<Option<Part>>,
    len: usize,
}

#[pymethods]
impl Chunk {
    fn __len__(&self) -> usize {
        self.len
    }

    /// A copy of bytes `start..end` of the chunk (clamped to it).
    fn bytes_at<'py>(
        &self,
        py: Python<'py>,
        start: usize,
        end: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let guard = lock(&self.part);
        let part = guard
            .as_ref()
            .ok_or_else(|| PyValueError::new_err("this chunk was already fed to a splitter"))?;
        let bytes = part.as_slice();
        let end = end.min(bytes.len());
        Ok(PyBytes::new(py, &bytes[start.min(end)..end]))
    }
}

/// Whole records (each ending with a newline) in buffers the storage client takes over.
#[pyclass(frozen, module = "shovel._native")]
pub struct Records {
    parts: Mutex<Option<Vec<Part>>>,
    len: usize,
}

impl Records {
    /// Records made of `parts`, each a window of whole lines (the NATS source builds its
    /// batches' records into such a part, as the splitter does from a file's chunks).
    pub(crate) fn new(parts: Vec<Part>) -> Records {
        Records {
            len: buffers::total_len(&parts),
            parts: Mutex::new(Some(parts)),
        }
    }

    /// How many bytes the records hold.
    pub fn byte_len(&self) -> usize {
        self.len
    }

    /// Runs `f` on the parts still held (`None` once handed to storage); when it returns
    /// true the parts are gone for good (it took them).
    pub fn hand_over<R>(&self, f: impl FnOnce(Option<&mut Vec<Part>>) -> (R, bool)) -> R {
        let mut slot = lock(&self.parts);
        let (outcome, taken) = f(slot.as_mut());
        if taken {
            *slot = None;
        }
        outcome
    }
}

#[pymethods]
impl Records {
    fn __len__(&self) -> usize {
        self.len
    }

    /// A copy of the bytes (for tests and diagnostics; the service never needs one).
    fn __bytes__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let guard = lock(&self.parts);
        let parts = guard.as_ref().ok_or_else(|| {
            PyValueError::new_err("these records were handed to storage; their bytes are gone")
        })?;
        let mut out = Vec::with_capacity(self.len);
        for part in parts {
            out.extend_from_slice(part.as_slice());
        }
        Ok(PyBytes::new(py, &out))
    }

    fn __repr__(&self) -> String {
        format!("<Records of {} bytes>", self.len)
    }
}

/// A regular file opened for reading in chunks.
#[pyclass(frozen, module = "shovel._native")]
pub struct ReadFile {
    /// Shared with a read in progress, so that `close` never waits for one: the descriptor is
    /// closed when the last user lets go.
    file: Mutex<Option<Arc<File>>>,
    path: PathBuf,
}

impl ReadFile {
    fn file(&self) -> PyResult<Arc<File>> {
        lock(&self.file).as_ref().cloned().ok_or_else(closed_error)
    }
}

#[pymethods]
impl ReadFile {
    /// Opens `path` for reading (blocking: call it off the event loop).
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let opened = py.detach(|| File::open(&path));
        let file = opened.map_err(|e| os_error(&e, &path))?;
        Ok(ReadFile {
            file: Mutex::new(Some(Arc::new(file))),
            path,
        })
    }

    /// The file descriptor (for fstat and pread), valid until `close`.
    fn fileno(&self) -> PyResult<i32> {
        self.file().map(|file| file.as_raw_fd())
    }

    /// Moves the read position to byte `pos`.
    fn seek(&self, pos: u64) -> PyResult<()> {
        let file = self.file()?;
        (&*file)
            .seek(SeekFrom::Start(pos))
            .map(|_| ())
            .map_err(|e| os_error(&e, &self.path))
    }

    /// Reads up to `max_bytes` from the read position into a reused buffer, with the GIL
    /// released (blocking: call it off the event loop). An empty chunk is the end of the file.
    fn read(&self, py: Python<'_>, max_bytes: usize) -> PyResult<Chunk> {
        if max_bytes == 0 {
            return Err(PyValueError::new_err("max_bytes must be at least 1"));
        }
        let file = self.file()?;
        let part = py
            .detach(move || split::read_chunk(&file, max_bytes))
            .map_err(|e| os_error(&e, &self.path))?;
        Ok(Chunk {
            len: part.len(),
            part: Mutex::new(Some(part)),
        })
    }

    /// The name of the pseudo filesystem (procfs, sysfs and their kin) the file lives on, or
    /// None for a filesystem that holds files (see fskind.rs).
    fn pseudo_filesystem(&self) -> PyResult<Option<&'static str>> {
        let file = self.file()?;
        crate::fskind::pseudo_filesystem(&file).map_err(|e| os_error(&e, &self.path))
    }

    /// When the file was born (nanoseconds since the epoch), or None where the filesystem does
    /// not say (see fskind.rs).
    fn birth_time_ns(&self) -> PyResult<Option<u64>> {
        let file = self.file()?;
        let meta = file.metadata().map_err(|e| os_error(&e, &self.path))?;
        Ok(crate::fskind::birth_time_ns(&meta))
    }

    /// Closes the file; a read in progress finishes first, on its own thread. Idempotent.
    fn close(&self) {
        lock(&self.file).take();
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.file).is_none()
    }
}

/// Cuts chunks at newlines into batches of whole records, carrying a partial last line over,
/// and sets lines over the record limit apart.
#[pyclass(frozen, module = "shovel._native")]
pub struct Splitter {
    inner: Mutex<split::Splitter>,
}

/// A piece as Python receives it: `(Records, records, end_offset)` for a batch,
/// `(offset, bytes, first, last)` for (part of) a rejected line.
fn to_python(py: Python<'_>, piece: Piece) -> PyResult<Py<PyAny>> {
    let obj = match piece {
        Piece::Batch {
            parts,
            records,
            end_offset,
        } => (Records::new(parts), records, end_offset)
            .into_pyobject(py)?
            .into_any(),
        Piece::Rejected {
            offset,
            data,
            first,
            last,
        } => (offset, PyBytes::new(py, &data), first, last)
            .into_pyobject(py)?
            .into_any(),
    };
    Ok(obj.unbind())
}

fn all_to_python(py: Python<'_>, pieces: Vec<Piece>) -> PyResult<Vec<Py<PyAny>>> {
    pieces.into_iter().map(|p| to_python(py, p)).collect()
}

#[pymethods]
impl Splitter {
    /// A splitter whose first byte is at source offset `start_offset`.
    #[new]
    fn new(start_offset: u64, max_record_bytes: u64) -> Self {
        Splitter {
            inner: Mutex::new(split::Splitter::new(start_offset, max_record_bytes)),
        }
    }

    /// Adds a chunk (a `Chunk`, taken over, or bytes, copied); its first `skip` bytes are
    /// consumed without being fed (only between lines). Returns the pieces it completes, in
    /// source order.
    #[pyo3(signature = (data, skip=0))]
    fn feed(&self, data: &Bound<'_, PyAny>, skip: usize) -> PyResult<Vec<Py<PyAny>>> {
        let py = data.py();
        let part = if let Ok(chunk) = data.cast::<Chunk>() {
            lock(&chunk.get().part)
                .take()
                .ok_or_else(|| PyValueError::new_err("this chunk was already fed to a splitter"))?
        } else {
            Part::copy_of(data.extract::<&[u8]>()?)
        };
        if skip > part.len() {
            return Err(PyValueError::new_err(format!(
                "cannot skip {skip} bytes of a chunk of {}",
                part.len()
            )));
        }
        let pieces = {
            let mut inner = lock(&self.inner);
            if skip > 0 && !inner.skip(skip as u64) {
                return Err(PyValueError::new_err(
                    "bytes can be skipped only between lines, not inside one",
                ));
            }
            inner.feed(part.skip(skip))
        };
        all_to_python(py, pieces)
    }

    /// Sets the next line (up to and including its newline) apart as a rejected line,
    /// whatever its length; ValueError in the middle of a line.
    fn set_aside_line(&self) -> PyResult<()> {
        if lock(&self.inner).set_aside_line() {
            Ok(())
        } else {
            Err(PyValueError::new_err(
                "a line can be set aside only from its start, not from its middle",
            ))
        }
    }

    /// At the end of the input: an unterminated last line becomes a record, or ends the
    /// oversized line being streamed.
    fn finish(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        let pieces = lock(&self.inner).finish();
        all_to_python(py, pieces)
    }

    /// Source offset just past the last byte handed out.
    #[getter]
    fn get_offset(&self) -> u64 {
        lock(&self.inner).offset()
    }

    /// Bytes of an incomplete record held back.
    #[getter]
    fn carried(&self) -> usize {
        lock(&self.inner).carried()
    }

    /// Whether an oversized line is being streamed out (its end not seen yet).
    #[getter]
    fn rejecting_line(&self) -> bool {
        lock(&self.inner).rejecting_line()
    }
}

/// When the file at `path` was born (nanoseconds since the epoch; a link itself, not what it
/// leads to), or None where the filesystem does not say. Raises OSError naming `path`.
#[pyfunction]
pub(crate) fn birth_time_ns(path: PathBuf) -> PyResult<Option<u64>> {
    crate::fskind::birth_time_ns_of(&path).map_err(|e| os_error(&e, &path))
}
