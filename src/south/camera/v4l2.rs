//! A real USB/V4L2 camera through nokhwa (cargo feature `camera-v4l2`; building it needs
//! libclang for nokhwa's V4L2 bindings). Checked on a bench by `hil-tests/`.
//!
//! Newest frame, never a stale one: V4L2 keeps a small ring of filled buffers, so a frame
//! that comes back at once was captured before the trigger. `capture` drops frames that
//! arrive faster than a quarter of the frame period (at most `MAX_STALE` of them) and
//! returns the first one the driver had to wait for. On a capture error the stream is
//! closed and reopened at the next capture, so an unplugged camera recovers when it is
//! plugged back in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use image::RgbImage;
use nokhwa::Camera;
use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{
    ApiBackend, CameraFormat, CameraIndex, ControlValueSetter, FrameFormat, KnownCameraControl, RequestedFormat,
    RequestedFormatType, Resolution,
};

use super::{CameraError, CameraSettings, Frame, FrameSource};
use crate::config::{CameraDevice, PixelFormat};

/// More than the driver's buffer ring (nokhwa asks V4L2 for 4).
const MAX_STALE: usize = 5;

pub struct V4l2Camera {
    id: String,
    settings: Settings,
    camera: Option<Camera>,
    /// The exposure set through the API, re-applied after a reopen.
    exposure: Option<i64>,
}

#[derive(Clone)]
pub struct Settings {
    pub device: CameraDevice,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub format: PixelFormat,
}

impl V4l2Camera {
    pub fn open(id: &str, settings: Settings) -> Result<V4l2Camera, CameraError> {
        let mut camera = V4l2Camera { id: id.to_owned(), settings, camera: None, exposure: None };
        camera.reopen()?;
        Ok(camera)
    }

    fn reopen(&mut self) -> Result<(), CameraError> {
        let open_error = |message: String| CameraError::Open { camera: self.id.clone(), message };
        let index = match &self.settings.device {
            CameraDevice::Index(index) => CameraIndex::Index(*index),
            CameraDevice::Name(name) => nokhwa::query(ApiBackend::Video4Linux)
                .map_err(|err| open_error(err.to_string()))?
                .into_iter()
                .find(|info| &info.human_name() == name)
                .map(|info| info.index().clone())
                .ok_or_else(|| open_error(format!("no V4L2 camera named {name:?}")))?,
        };
        let format = match self.settings.format {
            PixelFormat::Mjpeg => FrameFormat::MJPEG,
            PixelFormat::Yuyv => FrameFormat::YUYV,
        };
        // An exact format: nokhwa's "highest frame rate" choice picks odd formats.
        let wanted =
            CameraFormat::new(Resolution::new(self.settings.width, self.settings.height), format, self.settings.fps);
        let requested = RequestedFormat::new::<RgbFormat>(RequestedFormatType::Exact(wanted));
        let mut camera = Camera::new(index, requested).map_err(|err| open_error(err.to_string()))?;
        camera.open_stream().map_err(|err| open_error(err.to_string()))?;
        if let Some(exposure) = self.exposure {
            set_exposure(&mut camera, exposure).map_err(open_error)?;
        }
        self.camera = Some(camera);
        Ok(())
    }

    fn grab_newest(&mut self) -> Result<RgbImage, CameraError> {
        let capture_error = |message: String| CameraError::Capture { camera: self.id.clone(), message };
        let period = Duration::from_secs_f64(1.0 / self.settings.fps.max(1) as f64);
        let camera = self.camera.as_mut().ok_or_else(|| CameraError::Disconnected { camera: self.id.clone() })?;
        let mut buffer = None;
        for _ in 0..=MAX_STALE {
            let started = Instant::now();
            let frame = camera.frame().map_err(|err| capture_error(err.to_string()))?;
            let waited = started.elapsed() >= period / 4;
            buffer = Some(frame);
            if waited {
                break;
            }
        }
        let buffer = buffer.expect("the loop runs at least once");
        let decoded = buffer.decode_image::<RgbFormat>().map_err(|err| capture_error(err.to_string()))?;
        let (width, height) = decoded.dimensions();
        RgbImage::from_raw(width, height, decoded.into_raw())
            .ok_or_else(|| capture_error("decoded frame has the wrong size".into()))
    }
}

/// Manual exposure: V4L2's absolute exposure control, in the driver's unit.
fn set_exposure(camera: &mut Camera, value: i64) -> Result<(), String> {
    camera
        .set_camera_control(KnownCameraControl::Exposure, ControlValueSetter::Integer(value))
        .map_err(|err| format!("exposure {value}: {err}"))
}

impl FrameSource for V4l2Camera {
    fn settings(&self) -> CameraSettings {
        CameraSettings {
            width: Some(self.settings.width),
            height: Some(self.settings.height),
            fps: Some(self.settings.fps),
            exposure: self.exposure,
        }
    }

    /// A new size or rate reopens the stream with the exact format (restoring the old one
    /// if the driver refuses it); exposure is a control set on the open stream.
    fn configure(&mut self, change: &CameraSettings) -> Result<CameraSettings, CameraError> {
        let before = (self.settings.clone(), self.exposure);
        self.settings.width = change.width.unwrap_or(self.settings.width);
        self.settings.height = change.height.unwrap_or(self.settings.height);
        self.settings.fps = change.fps.unwrap_or(self.settings.fps);
        self.exposure = change.exposure.or(self.exposure);
        let format_changed = (self.settings.width, self.settings.height, self.settings.fps)
            != (before.0.width, before.0.height, before.0.fps);
        let applied = if format_changed || self.camera.is_none() {
            if let Some(mut camera) = self.camera.take() {
                let _ = camera.stop_stream();
            }
            self.reopen().map_err(|err| err.to_string())
        } else if let (Some(exposure), Some(camera)) = (change.exposure, self.camera.as_mut()) {
            set_exposure(camera, exposure)
        } else {
            Ok(())
        };
        if let Err(message) = applied {
            (self.settings, self.exposure) = before;
            if self.camera.is_none() {
                let _ = self.reopen();
            }
            return Err(CameraError::Rejected { camera: self.id.clone(), message });
        }
        Ok(self.settings())
    }

    fn capture(&mut self) -> Result<Frame, CameraError> {
        if self.camera.is_none() {
            self.reopen().map_err(|_| CameraError::Disconnected { camera: self.id.clone() })?;
            tracing::warn!(camera = self.id, "camera reopened");
        }
        match self.grab_newest() {
            Ok(image) => Ok(Frame { image: Arc::new(image), captured_at: Utc::now(), origin: self.id.clone() }),
            Err(err) => {
                // Drop the stream; the next capture reopens it (unplug and replug).
                if let Some(mut camera) = self.camera.take() {
                    let _ = camera.stop_stream();
                }
                Err(err)
            }
        }
    }
}
