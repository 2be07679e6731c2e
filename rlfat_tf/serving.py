"""The servable: a classifier as a SavedModel that TensorFlow Serving loads.

Two signatures, both returning the same outputs:

- ``serving_default`` takes ``images``, float32 [batch, H, W, C] with values in
  [0, 1] (the model's own input; nothing normalises outside it); C is 3, or
  1 for a grayscale model (e.g. trained on tfds:mnist).
- ``serving_bytes`` takes ``image_bytes``, string [batch]: encoded PNG, JPEG,
  GIF, BMP or (still) WebP images, as TensorFlow Serving's REST API passes
  ``{"b64": ...}`` values. Each image is decoded to the model's C channels
  (alpha dropped; for C = 1 colour images become their luma, as
  ``tf.image.rgb_to_grayscale``) and, only if its size differs from H x W,
  resized (bilinear with antialiasing).

Outputs: ``logits`` float32 [batch, classes], ``probabilities`` (their
softmax), ``classes`` int64 [batch] (the top-1 index) and ``class_names``
string [batch] (its name, read from the ``class_names.txt`` asset, one name a
line, line number = class index).

The graph checks its input itself. Clients that bypass the Python signature
(TensorFlow Serving, a loaded ``signatures[...]`` function) would otherwise
run a wrong-sized batch through the global average pool and get answers, or
crash the process on a wrong rank; instead they get an error that names the
expected shape. NaN or Inf values get their own error, and values outside
[0, 1] (most often 8-bit pixels not divided by 255) are refused the same way.
An empty batch returns empty outputs.

``serving_bytes`` reads each image's width and height from its header before
decoding it and refuses images of more than ``max_image_pixels`` pixels: a
small compressed file can decode to gigabytes (a 285 KB PNG of 10,000 x 10,000
pixels), which would take the server's memory.
"""

import os
import tempfile

import tensorflow as tf

from rlfat_tf import classifier

IMAGES_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"
IMAGES_INPUT = "images"
BYTES_INPUT = "image_bytes"
OUTPUTS = ("logits", "probabilities", "classes", "class_names")
CLASS_NAMES_ASSET = "class_names.txt"

# tf.debugging.Assert prints this many elements of each tensor it reports, so
# the offending shape appears in full.
_SUMMARIZE = 8

# 2048 x 2048: any real photograph fits, and the float32 decode of the largest
# allowed image stays under 50 MB.
DEFAULT_MAX_IMAGE_PIXELS = 2048 * 2048

CHANNELS = (1, 3)


def check_images(images, height, width, channels=3):
  """Passes ``images`` through once the graph has checked shape and range.

  Args:
    images: a float32 tensor that should be [batch, height, width, channels]
      in [0, 1].
    height: expected image height.
    width: expected image width.
    channels: expected channels.

  Returns:
    ``images``, with control dependencies on the checks, which raise
    ``tf.errors.InvalidArgumentError`` naming the expected shape, finite values
    or range.
  """
  shape = tf.shape(images)
  # Padding lets an input of lower rank still compare with [H, W, C].
  padded = tf.concat([shape, tf.zeros([4], tf.int32)], axis=0)
  shape_ok = tf.logical_and(
      tf.equal(tf.size(shape), 4),
      tf.reduce_all(tf.equal(padded[1:4], [height, width, channels])))
  shape_check = tf.debugging.Assert(
      shape_ok, [f"{IMAGES_INPUT} must be float32 [batch, {height}, {width}, "
                 f"{channels}]; got shape", shape], summarize=_SUMMARIZE)
  with tf.control_dependencies([shape_check]):
    finite_check = tf.debugging.Assert(
        tf.reduce_all(tf.math.is_finite(images)),
        [f"{IMAGES_INPUT} hold NaN or Inf values; send finite pixel values "
         f"in [0, 1]"], summarize=_SUMMARIZE)
  with tf.control_dependencies([finite_check]):
    range_ok = tf.reduce_all(
        tf.logical_and(images >= 0.0, images <= 1.0))
    range_check = tf.debugging.Assert(
        range_ok, [f"{IMAGES_INPUT} must lie in [0, 1] (divide 8-bit pixels "
                   f"by 255); got min and max", tf.reduce_min(images),
                   tf.reduce_max(images)], summarize=_SUMMARIZE)
  with tf.control_dependencies([range_check]):
    return tf.identity(images)


def _header_integer(data, offset, size, little_endian):
  """An unsigned integer of ``size`` (2 to 4) bytes at ``offset`` of ``data``."""
  raw = tf.io.decode_raw(tf.strings.substr(data, offset, size), tf.uint8,
                         fixed_length=size)
  raw = tf.cast(raw, tf.int64)
  if not little_endian:
    raw = tf.reverse(raw, [0])
  return tf.reduce_sum(raw * tf.constant([256**i for i in range(size)],
                                         tf.int64))


def _is_webp(data):
  return tf.logical_and(
      tf.equal(tf.strings.substr(data, 0, 4), b"RIFF"),
      tf.equal(tf.strings.substr(data, 8, 4), b"WEBP"))


def _webp_pixels(data):
  """Width x height of a WebP image from its first chunk (RFC 9649).

  Lossy ("VP8 ") keeps 14-bit sizes after the frame's start code, lossless
  ("VP8L") 14-bit sizes minus one packed after its signature byte, extended
  ("VP8X") the canvas size minus one in 24 bits each.
  """
  chunk = tf.strings.substr(data, 12, 4)
  mask = tf.constant(0x3FFF, tf.int64)

  def lossy():
    return ((_header_integer(data, 26, 2, True) & mask) *
            (_header_integer(data, 28, 2, True) & mask))

  def lossless():
    bits = _header_integer(data, 21, 4, True)
    return ((bits & mask) + 1) * (
        (tf.bitwise.right_shift(bits, 14) & mask) + 1)

  def extended():
    return ((_header_integer(data, 24, 3, True) + 1) *
            (_header_integer(data, 27, 3, True) + 1))

  return tf.case([
      (tf.equal(chunk, b"VP8 "), lossy),
      (tf.equal(chunk, b"VP8L"), lossless),
      (tf.equal(chunk, b"VP8X"), extended),
  ], default=lambda: tf.constant(-1, tf.int64), exclusive=True)


def _decode_webp(data):
  """A still WebP image as float32 [H, W, 3] in [0, 1].

  ``tf.io.decode_image`` refuses WebP with a float dtype, and TensorFlow's
  WebP decoder aborts the process on an animation, so animations (the
  animation flag of an extended header) are refused before it runs.
  """
  extended = tf.equal(tf.strings.substr(data, 12, 4), b"VP8X")
  animated = tf.logical_and(
      extended,
      tf.not_equal(_header_integer(data, 20, 1, True) & 2, 0))
  check = tf.debugging.Assert(
      tf.logical_not(animated),
      [f"{BYTES_INPUT}: an image is an animated WebP, which is not "
       f"supported: send a still image (PNG, JPEG, BMP, GIF or WebP)"])
  with tf.control_dependencies([check]):
    # Channels as stored (3, or 4 with alpha, which is dropped as
    # decode_image drops it for PNG); one frame, [1, H, W, C].
    image = tf.io.decode_webp(data, channels=0)[0, :, :, :3]
  return tf.image.convert_image_dtype(image, tf.float32)


def header_pixels(data):
  """Width x height of an encoded image, read from its header alone.

  PNG (IHDR), GIF (logical screen), BMP (DIB header), WebP (its first chunk)
  and JPEG (SOF marker, ``tf.image.extract_jpeg_shape``) are read without
  decoding any pixel.

  Args:
    data: scalar string, the encoded image.

  Returns:
    Scalar int64 pixel count; -1 for data too short or of another format (the
    decoder then reports it).
  """
  length = tf.strings.length(data)
  magic = tf.strings.substr(data, 0, 4)

  def png():
    return (_header_integer(data, 16, 4, False) *
            _header_integer(data, 20, 4, False))

  def gif():
    return (_header_integer(data, 6, 2, True) *
            _header_integer(data, 8, 2, True))

  def bmp():
    # The height is signed (negative for top-down rows).
    height = tf.bitcast(tf.cast(_header_integer(data, 22, 4, True), tf.uint32),
                        tf.int32)
    return _header_integer(data, 18, 4, True) * tf.abs(tf.cast(height,
                                                                tf.int64))

  def jpeg():
    shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
    return shape[0] * shape[1]

  return tf.case([
      (tf.logical_and(tf.equal(magic, b"\x89PNG"), length >= 24), png),
      (tf.logical_and(tf.equal(tf.strings.substr(data, 0, 3), b"GIF"),
                      length >= 10), gif),
      (tf.logical_and(tf.equal(tf.strings.substr(data, 0, 2), b"BM"),
                      length >= 26), bmp),
      (tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff"), jpeg),
      (tf.logical_and(_is_webp(data), length >= 30),
       lambda: _webp_pixels(data)),
  ], default=lambda: tf.constant(-1, tf.int64), exclusive=True)


def _grayscale(image):
  """A decoded image of 1 to 4 channels as its one luma channel.

  Gray (with or without alpha) is kept exact; RGB (with or without alpha)
  becomes ``tf.image.rgb_to_grayscale`` of its colours.
  """
  return tf.cond(tf.shape(image)[-1] < 3, lambda: image[..., :1],
                 lambda: tf.image.rgb_to_grayscale(image[..., :3]))


def decode_images(image_bytes, height, width,
                  max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS, channels=3):
  """Decodes encoded images to float32 [batch, height, width, C] in [0, 1].

  Args:
    image_bytes: string [batch] of PNG, JPEG, GIF (first frame), BMP or
      still WebP data.
    height: output height.
    width: output width.
    max_image_pixels: largest width x height decoded; a larger image is
      refused from its header, before any pixel is decoded.
    channels: C, 3 (alpha dropped, gray replicated) or 1 (``_grayscale``).

  Returns:
    The decoded batch; images of another size are resized with bilinear
    interpolation and antialiasing, images of this size are left exact.
  """

  def decode(data):
    pixels = header_pixels(data)
    size_check = tf.debugging.Assert(
        pixels <= max_image_pixels,
        [f"{BYTES_INPUT}: an image has more than {max_image_pixels} pixels "
         f"(width x height from its header); send images of at most that "
         f"size, e.g. resized to {height}x{width}; got", pixels],
        summarize=_SUMMARIZE)
    with tf.control_dependencies([size_check]):
      data = tf.identity(data)
    image = tf.cond(
        _is_webp(data), lambda: _decode_webp(data),
        lambda: tf.io.decode_image(data, channels=0 if channels == 1 else 3,
                                   dtype=tf.float32, expand_animations=False))
    if channels == 1:
      image = _grayscale(image)
    same_size = tf.reduce_all(tf.equal(tf.shape(image)[:2], [height, width]))
    # Rounding in the resize can step just outside [0, 1], which the model's
    # input check refuses.
    resized = tf.cond(
        same_size, lambda: image,
        lambda: tf.clip_by_value(
            tf.image.resize(image, [height, width], antialias=True), 0.0,
            1.0))
    return tf.ensure_shape(resized, [height, width, channels])

  return tf.map_fn(
      decode, image_bytes,
      fn_output_signature=tf.TensorSpec([height, width, channels],
                                        tf.float32))


class Servable(tf.Module):
  """A Keras classifier with serving signatures and its class names.

  Attributes:
    serve_images: the ``serving_default`` tf.function.
    serve_bytes: the ``serving_bytes`` tf.function.
    class_names_file: the class-names ``tf.saved_model.Asset``.
  """

  def __init__(self, model, class_names_path,
               max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """Wraps ``model``.

    Args:
      model: a Keras model mapping [batch, H, W, C] images in [0, 1] to
        logits, C in `CHANNELS`.
      class_names_path: text file of class names, one a line in class order;
        it is copied into the SavedModel's assets.
      max_image_pixels: largest encoded image ``serving_bytes`` decodes.
    """
    super().__init__()
    _, height, width, channels = model.input_shape
    if channels not in CHANNELS:
      raise ValueError(f"the model takes {channels} channels; serving "
                       f"decodes grayscale (1) or RGB (3) images")
    self.model_variables = classifier.tf_variables(model)
    self.class_names_file = tf.saved_model.Asset(class_names_path)
    self.class_table = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            self.class_names_file, key_dtype=tf.int64,
            key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            value_dtype=tf.string,
            value_index=tf.lookup.TextFileIndex.WHOLE_LINE),
        default_value="")

    # The model is captured by closure rather than tracked as a child: what
    # the SavedModel needs of it is its variables, tracked above.
    num_classes = model.output_shape[-1]

    def outputs(images):
      # BatchNorm kernels fail on an empty batch; an empty request gets an
      # empty answer instead.
      logits = tf.cond(
          tf.shape(images)[0] > 0, lambda: model(images, training=False),
          lambda: tf.zeros([0, num_classes], tf.float32))
      classes = tf.argmax(logits, axis=-1)
      return {"logits": logits,
              "probabilities": tf.nn.softmax(logits, axis=-1),
              "classes": classes,
              "class_names": self.class_table.lookup(classes)}

    def serve_images(images):
      return outputs(check_images(images, height, width, channels))

    def serve_bytes(image_bytes):
      return outputs(decode_images(image_bytes, height, width,
                                   max_image_pixels, channels))

    self.serve_images = tf.function(
        serve_images, autograph=False, input_signature=[
            tf.TensorSpec([None, height, width, channels], tf.float32,
                          name=IMAGES_INPUT)])
    self.serve_bytes = tf.function(
        serve_bytes, autograph=False, input_signature=[
            tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])

  def signatures(self):
    """The signature map for ``tf.saved_model.save``."""
    return {IMAGES_SIGNATURE: self.serve_images.get_concrete_function(),
            BYTES_SIGNATURE: self.serve_bytes.get_concrete_function()}


def save(model, class_names, export_dir,
         max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
  """Writes ``model`` as a servable SavedModel.

  Args:
    model: a Keras model mapping [batch, H, W, C] images in [0, 1] to
      logits, C in `CHANNELS`.
    class_names: the class names, in class-index order.
    export_dir: the SavedModel folder to write (a TF Serving version folder).
    max_image_pixels: largest width x height the bytes signature decodes.

  Raises:
    ValueError: a class name is empty or spans lines, or their number does not
      match the model's outputs.
  """
  class_names = list(class_names)
  if any(not name or "\n" in name for name in class_names):
    raise ValueError("class names must be non-empty single lines")
  if len(class_names) != model.output_shape[-1]:
    raise ValueError(f"{len(class_names)} class names for a model with "
                     f"{model.output_shape[-1]} outputs")
  with tempfile.TemporaryDirectory() as tmp:
    names_path = os.path.join(tmp, CLASS_NAMES_ASSET)
    with open(names_path, "w", encoding="utf-8") as f:
      f.write("".join(f"{name}\n" for name in class_names))
    servable = Servable(model, names_path, max_image_pixels)
    tf.saved_model.save(servable, export_dir,
                        signatures=servable.signatures())
