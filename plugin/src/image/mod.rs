//! The image data source: Spark's `ImageSchema`, decoders, file discovery, the table
//! function / table provider and the `ImageDecodeExec` operator.

pub mod decode;
pub mod exec;
pub mod listing;
pub mod options;
pub mod provider;
pub mod resize;
pub mod scan;
pub mod schema;

pub use decode::{DecodeOptions, InvalidImage, decode_image};
pub use exec::ImageDecodeExec;
pub use listing::{ImageListing, list_images, origin_uri};
pub use options::ImageReadOptions;
pub use provider::{ImageTableFactory, ImageTableProvider, ReadImagesFunction};
pub use scan::ImageScanSpec;
pub use schema::{ImageRow, image_data_type, image_field};
