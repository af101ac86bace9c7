//! Display orientation: phones record sideways and say how to turn the picture in the
//! stream's display matrix (MP4/MOV `tkhd`). Frames are turned as FFmpeg's CLI turns them
//! (`autorotate`), before any model sees them.

use ffmpeg_next as ffmpeg;

/// The chunk tag that carries the rotation: Matroska has no display matrix in FFmpeg 5.1, so
/// remuxed chunks keep it as the legacy `rotate` tag, which [`stream_rotation`] reads too.
pub(crate) const ROTATION_TAG: &str = "rotate";

/// Clockwise degrees (0, 90, 180 or 270) by which decoded frames of `stream` must be turned
/// for display: from its display matrix, else from a `rotate` tag.
pub(crate) fn stream_rotation(stream: &ffmpeg::format::stream::Stream<'_>) -> u16 {
    let from_matrix = stream.side_data().find_map(|side_data| {
        (side_data.kind() == ffmpeg::codec::packet::side_data::Type::DisplayMatrix)
            .then(|| matrix_rotation(side_data.data()))
            .flatten()
    });
    let degrees = from_matrix.or_else(|| {
        stream
            .metadata()
            .get(ROTATION_TAG)
            .and_then(|tag| tag.trim().parse::<f64>().ok())
    });
    degrees.map_or(0, quarter_turns)
}

/// The clockwise rotation a display matrix (nine native-endian 32-bit integers, 16.16 fixed
/// point) asks for, in degrees; `None` when it is degenerate.
pub(crate) fn matrix_rotation(data: &[u8]) -> Option<f64> {
    if data.len() < 36 {
        return None;
    }
    let value = |index: usize| -> f64 {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&data[index * 4..index * 4 + 4]);
        f64::from(i32::from_ne_bytes(bytes)) / 65536.0
    };
    let (a, b, c, d) = (value(0), value(1), value(3), value(4));
    let (scale_x, scale_y) = (a.hypot(c), b.hypot(d));
    if scale_x == 0.0 || scale_y == 0.0 {
        return None;
    }
    // FFmpeg's av_display_rotation_get gives the counter-clockwise angle; the picture is
    // turned by its opposite.
    Some((b / scale_y).atan2(a / scale_x).to_degrees())
}

/// `degrees` rounded to the nearest quarter turn, in 0..360.
fn quarter_turns(degrees: f64) -> u16 {
    if !degrees.is_finite() {
        return 0;
    }
    let quarters = (degrees / 90.0).round().rem_euclid(4.0);
    (quarters as u16) * 90
}

/// Turn a `width × height` packed-RGB image clockwise by `degrees` (a quarter-turn multiple;
/// anything else leaves it as it is): the pixels and the new width and height.
pub(crate) fn rotate_rgb(
    rgb: &[u8],
    width: usize,
    height: usize,
    degrees: u16,
) -> (Vec<u8>, usize, usize) {
    if !matches!(degrees, 90 | 180 | 270) || rgb.len() != width * height * 3 {
        return (rgb.to_vec(), width, height);
    }
    let (out_width, out_height) = if degrees == 180 {
        (width, height)
    } else {
        (height, width)
    };
    let mut out = vec![0u8; rgb.len()];
    for row in 0..out_height {
        for column in 0..out_width {
            let (source_row, source_column) = match degrees {
                90 => (height - 1 - column, row),
                180 => (height - 1 - row, width - 1 - column),
                _ => (column, width - 1 - row),
            };
            let from = (source_row * width + source_column) * 3;
            let to = (row * out_width + column) * 3;
            out[to..to + 3].copy_from_slice(&rgb[from..from + 3]);
        }
    }
    (out, out_width, out_height)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(values: [i32; 9]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }

    #[test]
    fn display_matrices_give_the_turn_ffmpeg_applies() {
        let one = 0x10000;
        let w = 0x4000_0000;
        // The matrices phones write: identity, portrait (90), upside down, and 270.
        for (values, expected) in [
            ([one, 0, 0, 0, one, 0, 0, 0, w], 0),
            ([0, one, 0, -one, 0, 0, 0, 0, w], 90),
            ([-one, 0, 0, 0, -one, 0, 0, 0, w], 180),
            ([0, -one, 0, one, 0, 0, 0, 0, w], 270),
        ] {
            let degrees = matrix_rotation(&matrix(values)).map_or(0, quarter_turns);
            assert_eq!(degrees, expected, "{values:?}");
        }
        assert_eq!(matrix_rotation(&matrix([0; 9])), None);
        assert_eq!(matrix_rotation(&[0; 8]), None);
    }

    #[test]
    fn quarter_turns_compose() {
        // 2x2: a b / c d.
        let image: Vec<u8> = [1u8, 2, 3, 4].iter().flat_map(|&v| [v, v, v]).collect();
        let firsts =
            |(rgb, ..): (Vec<u8>, usize, usize)| rgb.chunks(3).map(|p| p[0]).collect::<Vec<_>>();
        assert_eq!(firsts(rotate_rgb(&image, 2, 2, 90)), vec![3, 1, 4, 2]);
        assert_eq!(firsts(rotate_rgb(&image, 2, 2, 180)), vec![4, 3, 2, 1]);
        assert_eq!(firsts(rotate_rgb(&image, 2, 2, 270)), vec![2, 4, 1, 3]);
        assert_eq!(firsts(rotate_rgb(&image, 2, 2, 0)), vec![1, 2, 3, 4]);
        // 3 wide, 2 high: a b c / d e f turned clockwise is d a / e b / f c, 2 wide.
        let wide: Vec<u8> = [1u8, 2, 3, 4, 5, 6]
            .iter()
            .flat_map(|&v| [v, v, v])
            .collect();
        let (turned, width, height) = rotate_rgb(&wide, 3, 2, 90);
        assert_eq!((width, height), (2, 3));
        assert_eq!(firsts((turned, width, height)), vec![4, 1, 5, 2, 6, 3]);
        let (back, width, height) = rotate_rgb(&wide, 3, 2, 270);
        assert_eq!((width, height), (2, 3));
        assert_eq!(firsts((back, width, height)), vec![3, 6, 2, 5, 1, 4]);
    }
}
