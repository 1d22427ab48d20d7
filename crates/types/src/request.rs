//! Generation requests: the documented fields, their enumerations, and the validating builder.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::validate::{ValidationError, check_prompt, check_url};

/// Declares a closed enumeration of the API with its documented spelling, a friendly parser
/// ([`FromStr`]) and a strict serde form (exactly the documented spelling, both ways).
macro_rules! api_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $error:ident, default = $default:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal $(| $alias:literal)* ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in documentation order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The documented spelling, as sent on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $wire,)+
                }
            }

            /// Parses exactly the documented spelling (what a strict server accepts).
            pub fn from_documented(s: &str) -> Option<Self> {
                match s {
                    $($wire => Some(Self::$variant),)+
                    _ => None,
                }
            }

            /// The value the service uses when the field is omitted.
            pub const DEFAULT: Self = Self::$default;
        }

        impl Default for $name {
            fn default() -> Self {
                Self::DEFAULT
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let wanted = normalize(s);
                $(
                    if wanted == normalize($wire) $(|| wanted == normalize($alias))* {
                        return Ok(Self::$variant);
                    }
                )+
                Err(ValidationError::$error { value: s.to_owned() })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                Self::from_documented(&s).ok_or_else(|| {
                    serde::de::Error::custom(ValidationError::$error { value: s })
                })
            }
        }
    };
}

/// Lowercases and unifies the separators people write between a size's numbers.
fn normalize(s: &str) -> String {
    s.trim()
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c {
            'x' | 'X' | '×' | '✕' => '*',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

api_enum! {
    /// The size of the generated image.
    ///
    /// Serialized as the documented `WIDTH*HEIGHT` form; [`FromStr`] also accepts `1536x1024`,
    /// `1536×1024` and the names `square`, `portrait`, `landscape`, in any case.
    ///
    /// ```
    /// use gptimage_types::Size;
    ///
    /// assert_eq!("landscape".parse::<Size>()?, Size::Landscape);
    /// assert_eq!("1024X1536".parse::<Size>()?, Size::Portrait);
    /// assert_eq!(Size::Square.as_str(), "1024*1024");
    /// assert_eq!(Size::default(), Size::Square);
    /// assert_eq!(Size::Landscape.dimensions(), (1536, 1024));
    /// # Ok::<(), gptimage_types::ValidationError>(())
    /// ```
    Size, InvalidSize, default = Square {
        /// `1024*1024`, the default.
        Square = "1024*1024" | "square",
        /// `1024*1536`: taller than wide.
        Portrait = "1024*1536" | "portrait",
        /// `1536*1024`: wider than tall.
        Landscape = "1536*1024" | "landscape",
    }
}

impl Size {
    /// Width and height in pixels.
    pub fn dimensions(self) -> (u32, u32) {
        match self {
            Self::Square => (1024, 1024),
            Self::Portrait => (1024, 1536),
            Self::Landscape => (1536, 1024),
        }
    }
}

api_enum! {
    /// The quality of the generated image: `low`, `medium` (the default) or `high`.
    ///
    /// ```
    /// use gptimage_types::Quality;
    ///
    /// assert_eq!(" High ".parse::<Quality>()?, Quality::High);
    /// assert_eq!(Quality::default(), Quality::Medium);
    /// assert!("ultra".parse::<Quality>().is_err());
    /// # Ok::<(), gptimage_types::ValidationError>(())
    /// ```
    Quality, InvalidQuality, default = Medium {
        /// `low`: fastest.
        Low = "low",
        /// `medium`, the default.
        Medium = "medium",
        /// `high`: most detailed.
        High = "high",
    }
}

api_enum! {
    /// How closely an image-to-image result follows its input images: `low` or `high` (the
    /// default). Only meaningful together with input images.
    ///
    /// ```
    /// use gptimage_types::InputFidelity;
    ///
    /// assert_eq!("LOW".parse::<InputFidelity>()?, InputFidelity::Low);
    /// assert_eq!(InputFidelity::default(), InputFidelity::High);
    /// # Ok::<(), gptimage_types::ValidationError>(())
    /// ```
    InputFidelity, InvalidInputFidelity, default = High {
        /// `low`: the result may depart from the input.
        Low = "low",
        /// `high`, the default: the result keeps close to the input.
        High = "high",
    }
}

/// A validated generation request: text-to-image, or image-to-image when it has input images.
///
/// It can only be built through [`GenerateRequest::text_to_image`],
/// [`GenerateRequest::image_to_image`] or [`RawGenerateRequest::validate`] (which deserialization
/// uses too), so every value obeys the documented rules. It serializes to exactly the documented
/// JSON: sizes with `*`, omitted fields absent rather than `null`.
///
/// ```
/// use gptimage_types::{GenerateRequest, InputFidelity, Quality};
///
/// let edit = GenerateRequest::image_to_image(
///     "Add a rainbow in the sky",
///     ["https://example.com/landscape.jpg"],
/// )
/// .input_fidelity(InputFidelity::High)
/// .quality(Quality::Medium)
/// .build()?;
/// assert!(edit.is_image_to_image());
/// assert_eq!(
///     serde_json::to_string(&edit)?,
///     r#"{"prompt":"Add a rainbow in the sky","images":["https://example.com/landscape.jpg"],"input_fidelity":"high","quality":"medium"}"#
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawGenerateRequest")]
pub struct GenerateRequest {
    prompt: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<Size>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_fidelity: Option<InputFidelity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quality: Option<Quality>,
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_url: Option<String>,
}

/// Its input image URLs (signed ones carry a signature) and its callback URL (whose path is a
/// secret token) are shown redacted (see [`redact`](crate::redact)); `Serialize` sends them
/// whole, as the API needs.
impl std::fmt::Debug for GenerateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let images: Vec<String> = self.images.iter().map(|u| crate::redact(u)).collect();
        f.debug_struct("GenerateRequest")
            .field("prompt", &self.prompt)
            .field("size", &self.size)
            .field("images", &images)
            .field("input_fidelity", &self.input_fidelity)
            .field("quality", &self.quality)
            .field(
                "callback_url",
                &self.callback_url.as_deref().map(crate::redact),
            )
            .finish()
    }
}

/// Shown with its URLs redacted, as [`GenerateRequest`] is.
impl std::fmt::Debug for GenerateRequestBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let images = self
            .images
            .as_ref()
            .map(|urls| urls.iter().map(|u| crate::redact(u)).collect::<Vec<_>>());
        f.debug_struct("GenerateRequestBuilder")
            .field("prompt", &self.prompt)
            .field("images", &images)
            .field("size", &self.size)
            .field("quality", &self.quality)
            .field("input_fidelity", &self.input_fidelity)
            .field(
                "callback_url",
                &self.callback_url.as_deref().map(crate::redact),
            )
            .finish()
    }
}

impl GenerateRequest {
    /// Starts a text-to-image request.
    ///
    /// ```
    /// use gptimage_types::GenerateRequest;
    ///
    /// let request = GenerateRequest::text_to_image("a red fox in snow").build()?;
    /// assert_eq!(request.prompt(), "a red fox in snow");
    /// assert!(!request.is_image_to_image());
    /// # Ok::<(), gptimage_types::ValidationError>(())
    /// ```
    pub fn text_to_image(prompt: impl Into<String>) -> GenerateRequestBuilder {
        GenerateRequestBuilder {
            prompt: prompt.into(),
            images: None,
            size: None,
            quality: None,
            input_fidelity: None,
            callback_url: None,
        }
    }

    /// Starts an image-to-image request that edits `images` (absolute `http(s)` URLs; at least one).
    ///
    /// ```
    /// use gptimage_types::{GenerateRequest, ValidationError};
    ///
    /// let request = GenerateRequest::image_to_image("make it night", ["https://example.com/a.png"])
    ///     .build()?;
    /// assert_eq!(request.images(), ["https://example.com/a.png"]);
    ///
    /// let none: [&str; 0] = [];
    /// let err = GenerateRequest::image_to_image("make it night", none).build().unwrap_err();
    /// assert_eq!(err, ValidationError::EmptyImages);
    /// # Ok::<(), ValidationError>(())
    /// ```
    pub fn image_to_image<I, S>(prompt: impl Into<String>, images: I) -> GenerateRequestBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut builder = Self::text_to_image(prompt);
        builder.images = Some(images.into_iter().map(Into::into).collect());
        builder
    }

    /// The prompt.
    pub fn prompt(&self) -> &str {
        &self.prompt
    }

    /// The size, if one was set; the service uses [`Size::DEFAULT`] otherwise.
    pub fn size(&self) -> Option<Size> {
        self.size
    }

    /// The size the service will produce: the one set, or the default.
    ///
    /// ```
    /// use gptimage_types::{GenerateRequest, Size};
    ///
    /// let request = GenerateRequest::text_to_image("x").build()?;
    /// assert_eq!(request.size(), None);
    /// assert_eq!(request.effective_size(), Size::Square);
    /// # Ok::<(), gptimage_types::ValidationError>(())
    /// ```
    pub fn effective_size(&self) -> Size {
        self.size.unwrap_or_default()
    }

    /// The quality, if one was set; the service uses [`Quality::DEFAULT`] otherwise.
    pub fn quality(&self) -> Option<Quality> {
        self.quality
    }

    /// The quality the service will use: the one set, or the default.
    pub fn effective_quality(&self) -> Quality {
        self.quality.unwrap_or_default()
    }

    /// The input image URLs; empty for text-to-image.
    pub fn images(&self) -> &[String] {
        &self.images
    }

    /// Whether the request edits input images.
    pub fn is_image_to_image(&self) -> bool {
        !self.images.is_empty()
    }

    /// The input fidelity, if one was set (only ever with images).
    pub fn input_fidelity(&self) -> Option<InputFidelity> {
        self.input_fidelity
    }

    /// The webhook URL, if one was set.
    pub fn callback_url(&self) -> Option<&str> {
        self.callback_url.as_deref()
    }
}

/// Builds a [`GenerateRequest`]; [`build`](Self::build) checks every rule.
///
/// ```
/// use gptimage_types::{GenerateRequest, Size, ValidationError};
///
/// let err = GenerateRequest::text_to_image("a cat")
///     .callback_url("ftp://example.com/hook")
///     .build()
///     .unwrap_err();
/// assert!(matches!(err, ValidationError::InvalidCallbackUrl { .. }));
/// ```
#[derive(Clone, PartialEq, Eq)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct GenerateRequestBuilder {
    prompt: String,
    images: Option<Vec<String>>,
    size: Option<Size>,
    quality: Option<Quality>,
    input_fidelity: Option<InputFidelity>,
    callback_url: Option<String>,
}

impl GenerateRequestBuilder {
    /// Sets the size (default [`Size::Square`]).
    pub fn size(mut self, size: Size) -> Self {
        self.size = Some(size);
        self
    }

    /// Sets the quality (default [`Quality::Medium`]).
    pub fn quality(mut self, quality: Quality) -> Self {
        self.quality = Some(quality);
        self
    }

    /// Adds one input image URL, making the request image-to-image.
    pub fn image(mut self, url: impl Into<String>) -> Self {
        self.images.get_or_insert_with(Vec::new).push(url.into());
        self
    }

    /// Sets the input fidelity; valid only for image-to-image requests.
    pub fn input_fidelity(mut self, fidelity: InputFidelity) -> Self {
        self.input_fidelity = Some(fidelity);
        self
    }

    /// Sets the webhook URL notified when the task ends.
    pub fn callback_url(mut self, url: impl Into<String>) -> Self {
        self.callback_url = Some(url.into());
        self
    }

    /// Checks every rule and returns the request, or the first rule it breaks.
    pub fn build(self) -> Result<GenerateRequest, ValidationError> {
        check_prompt(&self.prompt)?;
        let images = match self.images {
            Some(images) if images.is_empty() => return Err(ValidationError::EmptyImages),
            Some(images) => images,
            None => Vec::new(),
        };
        for (index, url) in images.iter().enumerate() {
            check_url(url).map_err(|problem| ValidationError::InvalidImageUrl {
                index,
                url: url.clone(),
                problem,
            })?;
        }
        if self.input_fidelity.is_some() && images.is_empty() {
            return Err(ValidationError::InputFidelityWithoutImages);
        }
        if let Some(url) = &self.callback_url {
            check_url(url).map_err(|problem| ValidationError::InvalidCallbackUrl {
                url: url.clone(),
                problem,
            })?;
        }
        Ok(GenerateRequest {
            prompt: self.prompt,
            size: self.size,
            images,
            input_fidelity: self.input_fidelity,
            quality: self.quality,
            callback_url: self.callback_url,
        })
    }
}

/// A generation request as it arrives on the wire, before validation: every field optional and
/// every enumeration a plain string.
///
/// A server reads the body into this type and calls [`validate`](Self::validate), which applies
/// the documented rules strictly (sizes and qualities must be spelled exactly as documented) and
/// names the field at fault.
///
/// ```
/// use gptimage_types::{RawGenerateRequest, ValidationError};
///
/// let raw: RawGenerateRequest = serde_json::from_str(r#"{"size":"1024*1024"}"#)?;
/// assert_eq!(raw.validate().unwrap_err(), ValidationError::MissingPrompt);
///
/// let raw: RawGenerateRequest = serde_json::from_str(r#"{"prompt":"a","size":"2048*2048"}"#)?;
/// let err = raw.validate().unwrap_err();
/// assert_eq!(err.field(), "size");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RawGenerateRequest {
    /// The prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The size, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// The quality, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
    /// The input image URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<String>>,
    /// The input fidelity, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_fidelity: Option<String>,
    /// The webhook URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// Shown with its URLs redacted, as [`GenerateRequest`] is.
impl std::fmt::Debug for RawGenerateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let images = self
            .images
            .as_ref()
            .map(|urls| urls.iter().map(|u| crate::redact(u)).collect::<Vec<_>>());
        f.debug_struct("RawGenerateRequest")
            .field("prompt", &self.prompt)
            .field("size", &self.size)
            .field("quality", &self.quality)
            .field("images", &images)
            .field("input_fidelity", &self.input_fidelity)
            .field(
                "callback_url",
                &self.callback_url.as_deref().map(crate::redact),
            )
            .finish()
    }
}

impl RawGenerateRequest {
    /// Applies every documented rule, strictly, and returns the validated request.
    pub fn validate(self) -> Result<GenerateRequest, ValidationError> {
        let prompt = self.prompt.ok_or(ValidationError::MissingPrompt)?;
        // The prompt is checked first so that its error wins, as the service reports it first.
        check_prompt(&prompt)?;
        let mut builder = GenerateRequest::text_to_image(prompt);
        builder.images = self.images;
        if let Some(size) = self.size {
            builder.size = Some(
                Size::from_documented(&size).ok_or(ValidationError::InvalidSize { value: size })?,
            );
        }
        if let Some(quality) = self.quality {
            builder.quality = Some(
                Quality::from_documented(&quality)
                    .ok_or(ValidationError::InvalidQuality { value: quality })?,
            );
        }
        if let Some(fidelity) = self.input_fidelity {
            builder.input_fidelity = Some(
                InputFidelity::from_documented(&fidelity)
                    .ok_or(ValidationError::InvalidInputFidelity { value: fidelity })?,
            );
        }
        builder.callback_url = self.callback_url;
        builder.build()
    }
}

impl TryFrom<RawGenerateRequest> for GenerateRequest {
    type Error = ValidationError;

    fn try_from(raw: RawGenerateRequest) -> Result<Self, Self::Error> {
        raw.validate()
    }
}

impl From<GenerateRequest> for RawGenerateRequest {
    fn from(request: GenerateRequest) -> Self {
        Self {
            prompt: Some(request.prompt),
            size: request.size.map(|s| s.as_str().to_owned()),
            quality: request.quality.map(|q| q.as_str().to_owned()),
            images: (!request.images.is_empty()).then_some(request.images),
            input_fidelity: request.input_fidelity.map(|f| f.as_str().to_owned()),
            callback_url: request.callback_url,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn friendly_sizes() {
        for (text, size) in [
            ("1024*1024", Size::Square),
            ("1024x1024", Size::Square),
            ("SQUARE", Size::Square),
            ("1024 x 1536", Size::Portrait),
            ("1024×1536", Size::Portrait),
            ("Portrait", Size::Portrait),
            ("1536X1024", Size::Landscape),
            (" landscape ", Size::Landscape),
        ] {
            assert_eq!(text.parse::<Size>(), Ok(size), "{text}");
        }
        for text in [
            "",
            "1024",
            "1024*",
            "2048*2048",
            "1024*1024*1",
            "wide",
            "1024,1024",
        ] {
            assert_eq!(
                text.parse::<Size>(),
                Err(ValidationError::InvalidSize { value: text.into() }),
                "{text}"
            );
        }
    }

    #[test]
    fn strict_wire_forms() {
        assert_eq!(Size::from_documented("1536x1024"), None);
        assert_eq!(Quality::from_documented("HIGH"), None);
        assert!(serde_json::from_str::<Size>(r#""landscape""#).is_err());
        assert_eq!(
            serde_json::from_str::<Size>(r#""1536*1024""#).unwrap(),
            Size::Landscape
        );
    }

    #[test]
    fn rules_are_checked_in_order() {
        let err = GenerateRequest::text_to_image("")
            .input_fidelity(InputFidelity::Low)
            .build()
            .unwrap_err();
        assert_eq!(err, ValidationError::BlankPrompt);
        let err = GenerateRequest::text_to_image("ok")
            .input_fidelity(InputFidelity::Low)
            .build()
            .unwrap_err();
        assert_eq!(err, ValidationError::InputFidelityWithoutImages);
        let err = GenerateRequest::image_to_image("ok", ["https://a/x.png", "x.png"])
            .build()
            .unwrap_err();
        assert!(
            matches!(err, ValidationError::InvalidImageUrl { index: 1, .. }),
            "{err:?}"
        );
    }
}
