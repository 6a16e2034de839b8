//! [`PowerCutFileSystem`]: a raft-engine file system for power-loss tests.
//!
//! Files are real files in the engine's folder (raft-engine finds its files by listing the
//! folder), but the file system remembers, for every file, what its last `sync` made durable.
//! [`PowerCutFileSystem::cut_power`] freezes those images and [`PowerCutImages::restore`] puts
//! every file back to its image and deletes the files that were never synced: exactly what a machine that loses power keeps of writes that
//! no `fdatasync` covered (the pessimistic case: nothing unsynced survives). A store reopened on
//! the folder afterwards shows whether everything that was reported durable really was.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use raft_engine::env::{FileSystem, Handle, Permission, WriteExt};

/// What a power cut keeps of each file: its content at the last sync, or nothing.
type DurableImages = HashMap<PathBuf, Option<Vec<u8>>>;

/// See the module docs. Cheap to clone; clones share what they know of the files.
#[derive(Clone, Default)]
pub struct PowerCutFileSystem {
    images: Arc<Mutex<DurableImages>>,
}

/// What [`PowerCutImages::restore`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PowerCut {
    /// Files put back to their last synced content.
    pub files_restored: usize,
    /// Files deleted because no sync ever covered them.
    pub files_lost: usize,
    /// Bytes written after the last sync of their file, now gone.
    pub bytes_lost: u64,
}

impl PowerCutFileSystem {
    pub fn new() -> Arc<PowerCutFileSystem> {
        Arc::new(PowerCutFileSystem::default())
    }

    fn images(&self) -> std::sync::MutexGuard<'_, DurableImages> {
        self.images.lock().expect("power-cut images lock poisoned")
    }

    /// The power goes out now: what each file's last sync made durable, frozen. Later syncs
    /// (a store closing cleanly syncs) do not change it. [`PowerCutImages::restore`] then puts
    /// the files back to it, once the engine is closed.
    pub fn cut_power(&self) -> PowerCutImages {
        PowerCutImages { images: self.images().clone() }
    }
}

/// The durable content of every file at a power cut (see [`PowerCutFileSystem::cut_power`]).
pub struct PowerCutImages {
    images: DurableImages,
}

impl PowerCutImages {
    /// Puts every file back to its durable content and deletes the files no sync covered. Call
    /// it with the engine closed (the store dropped).
    pub fn restore(self) -> io::Result<PowerCut> {
        let mut cut = PowerCut::default();
        for (path, image) in &self.images {
            let current = std::fs::metadata(path).map(|metadata| metadata.len()).unwrap_or(0);
            match image {
                None => {
                    if path.exists() {
                        std::fs::remove_file(path)?;
                    }
                    cut.files_lost += 1;
                    cut.bytes_lost += current;
                }
                Some(bytes) => {
                    if std::fs::read(path).ok().as_deref() != Some(bytes.as_slice()) {
                        cut.bytes_lost += current.saturating_sub(bytes.len() as u64);
                        std::fs::write(path, bytes)?;
                        cut.files_restored += 1;
                    }
                }
            }
        }
        Ok(cut)
    }
}

/// An open file of [`PowerCutFileSystem`].
pub struct PowerCutHandle {
    path: PathBuf,
    file: std::fs::File,
    images: Arc<Mutex<DurableImages>>,
}

impl Handle for PowerCutHandle {
    fn truncate(&self, offset: usize) -> io::Result<()> {
        self.file.set_len(offset as u64)
    }

    fn file_size(&self) -> io::Result<usize> {
        Ok(self.file.metadata()?.len() as usize)
    }

    fn sync(&self) -> io::Result<()> {
        // The durable image is what the file holds now; no real fsync is needed for the test.
        let bytes = std::fs::read(&self.path)?;
        self.images.lock().expect("power-cut images lock poisoned").insert(self.path.clone(), Some(bytes));
        Ok(())
    }
}

/// Reads a file of [`PowerCutFileSystem`].
pub struct PowerCutReader(std::fs::File);

impl Read for PowerCutReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Seek for PowerCutReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

/// Writes a file of [`PowerCutFileSystem`].
pub struct PowerCutWriter(std::fs::File);

impl Write for PowerCutWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for PowerCutWriter {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

impl WriteExt for PowerCutWriter {
    fn truncate(&mut self, offset: usize) -> io::Result<()> {
        self.0.set_len(offset as u64)
    }

    fn allocate(&mut self, _offset: usize, _size: usize) -> io::Result<()> {
        Ok(())
    }
}

impl FileSystem for PowerCutFileSystem {
    type Handle = PowerCutHandle;
    type Reader = PowerCutReader;
    type Writer = PowerCutWriter;

    fn create<P: AsRef<Path>>(&self, path: P) -> io::Result<PowerCutHandle> {
        let path = path.as_ref().to_path_buf();
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        self.images().insert(path.clone(), None);
        Ok(PowerCutHandle { path, file, images: self.images.clone() })
    }

    fn open<P: AsRef<Path>>(&self, path: P, permission: Permission) -> io::Result<PowerCutHandle> {
        let path = path.as_ref().to_path_buf();
        let writable = permission == Permission::ReadWrite;
        let file = std::fs::OpenOptions::new().read(true).write(writable).open(&path)?;
        // A file that was there before this file system saw it is durable as it is.
        if !self.images().contains_key(&path) {
            let bytes = std::fs::read(&path)?;
            self.images().insert(path.clone(), Some(bytes));
        }
        Ok(PowerCutHandle { path, file, images: self.images.clone() })
    }

    fn delete<P: AsRef<Path>>(&self, path: P) -> io::Result<()> {
        self.images().remove(path.as_ref());
        std::fs::remove_file(path)
    }

    fn rename<P: AsRef<Path>>(&self, src_path: P, dst_path: P) -> io::Result<()> {
        let image = self.images().remove(src_path.as_ref());
        std::fs::rename(src_path.as_ref(), dst_path.as_ref())?;
        if let Some(image) = image {
            self.images().insert(dst_path.as_ref().to_path_buf(), image);
        }
        Ok(())
    }

    fn new_reader(&self, handle: Arc<PowerCutHandle>) -> io::Result<PowerCutReader> {
        Ok(PowerCutReader(std::fs::File::open(&handle.path)?))
    }

    fn new_writer(&self, handle: Arc<PowerCutHandle>) -> io::Result<PowerCutWriter> {
        Ok(PowerCutWriter(std::fs::OpenOptions::new().write(true).open(&handle.path)?))
    }
}
