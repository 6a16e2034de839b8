//! Small file helpers shared by the files Tally keeps beside sled (vote files, the flush mark):
//! errors that name the file, reads of files that may not exist, folder syncs.

use std::io;
use std::path::Path;

use crate::StoreError;

/// `error` with `path` in its message, so that a refused start says which file.
pub(crate) fn error_at(path: &Path, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// The file's bytes, `None` if there is no file.
pub(crate) fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(StoreError::Io(error_at(path, error))),
    }
}

/// Makes the folder's entries (a created or renamed file) durable.
pub(crate) fn sync_folder(folder: &Path) -> io::Result<()> {
    std::fs::File::open(folder).and_then(|folder| folder.sync_all())
}
