//! The simulated camera: replays the images of a folder in file-name order, cycling, so a
//! laptop or CI runs the whole daemon with known frames. Images are decoded at capture,
//! as a real camera delivers a fresh frame each time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;

use super::{CameraError, CameraSettings, Frame, FrameSource};

pub struct SimCamera {
    id: String,
    files: Vec<PathBuf>,
    next_idx: usize,
    /// Frames are resized to this when set (the folder's own size otherwise).
    size: Option<(u32, u32)>,
}

const EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp"];

impl SimCamera {
    pub fn open(id: &str, folder: &Path) -> Result<SimCamera, CameraError> {
        let open_error = |message: String| CameraError::Open { camera: id.to_owned(), message };
        let entries = std::fs::read_dir(folder).map_err(|err| open_error(format!("{}: {err}", folder.display())))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(open_error(format!("no images in {}", folder.display())));
        }
        Ok(SimCamera { id: id.to_owned(), files, next_idx: 0, size: None })
    }

    fn unsupported(&self, setting: &'static str) -> CameraError {
        CameraError::Unsupported { camera: self.id.clone(), setting }
    }
}

/// The size a sim camera can be asked for, each side.
const SIZES: std::ops::RangeInclusive<u32> = 16..=8192;

impl FrameSource for SimCamera {
    fn capture(&mut self) -> Result<Frame, CameraError> {
        let path = &self.files[self.next_idx];
        self.next_idx = (self.next_idx + 1) % self.files.len();
        let image = image::open(path).map_err(|err| CameraError::Capture {
            camera: self.id.clone(),
            message: format!("{}: {err}", path.display()),
        })?;
        let mut image = image.into_rgb8();
        if let Some((width, height)) = self.size {
            image = image::imageops::resize(&image, width, height, image::imageops::FilterType::Triangle);
        }
        Ok(Frame {
            image: Arc::new(image),
            captured_at: Utc::now(),
            origin: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        })
    }

    fn settings(&self) -> CameraSettings {
        CameraSettings {
            width: self.size.map(|(w, _)| w),
            height: self.size.map(|(_, h)| h),
            ..CameraSettings::default()
        }
    }

    /// A folder has no frame rate or exposure; its frames can be resized.
    fn configure(&mut self, change: &CameraSettings) -> Result<CameraSettings, CameraError> {
        if change.fps.is_some() {
            return Err(self.unsupported("fps"));
        }
        if change.exposure.is_some() {
            return Err(self.unsupported("exposure"));
        }
        match (change.width, change.height) {
            (None, None) => {}
            (Some(width), Some(height)) if SIZES.contains(&width) && SIZES.contains(&height) => {
                self.size = Some((width, height));
            }
            _ => {
                return Err(CameraError::Rejected {
                    camera: self.id.clone(),
                    message: format!("width and height go together, each {}..={}", SIZES.start(), SIZES.end()),
                });
            }
        }
        Ok(self.settings())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_through_the_folder_in_name_order() {
        let mut camera = SimCamera::open("cam0", Path::new("examples/parts")).unwrap();
        let n = camera.files.len();
        let first = camera.capture().unwrap();
        assert_eq!(first.origin, "00_ok.jpg");
        for _ in 1..n {
            camera.capture().unwrap();
        }
        assert_eq!(camera.capture().unwrap().origin, "00_ok.jpg");
    }

    #[test]
    fn empty_or_missing_folder_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(SimCamera::open("c", dir.path()), Err(CameraError::Open { .. })));
        assert!(matches!(SimCamera::open("c", &dir.path().join("nope")), Err(CameraError::Open { .. })));
    }

    #[test]
    fn an_unreadable_frame_is_a_capture_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("broken.jpg"), b"not a jpeg").unwrap();
        let mut camera = SimCamera::open("c", dir.path()).unwrap();
        let err = camera.capture().unwrap_err();
        assert!(err.is_retryable(), "{err}");
    }
}
