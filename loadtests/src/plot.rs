//! The report's timeline as a PNG: forwarded packets per second (top) and end-to-end
//! latency p50/p99 (bottom) over the measuring window.

use plotters::prelude::*;
use serde_json::Value;
use std::path::Path;

/// Fonts tried for the labels (Debian's fonts-dejavu-core, which Chromium pulls in).
const FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn series(timeline: &[Value], key: &str) -> Vec<(f64, f64)> {
    timeline
        .iter()
        .filter_map(|p| Some((p["t"].as_f64()?, p[key].as_f64()?)))
        .collect()
}

/// Draws `report`'s timeline to `path` (PNG, 1000×700).
pub fn plot(report: &Value, path: &Path) -> Result<(), String> {
    let font = FONTS
        .iter()
        .find_map(|f| std::fs::read(f).ok())
        .ok_or("no TrueType font found for the plot's labels (install fonts-dejavu-core)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| "cannot load the plot font".to_owned())?;
    let timeline = report["timeline"].as_array().cloned().unwrap_or_default();
    if timeline.is_empty() {
        return Err("the report has no timeline".into());
    }
    let pps = series(&timeline, "received_pps");
    let p50 = series(&timeline, "latency_p50_ms");
    let p99 = series(&timeline, "latency_p99_ms");
    let t_max = pps.iter().map(|p| p.0).fold(1.0, f64::max);
    let pps_max = pps.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let lat_max = p99.iter().map(|p| p.1).fold(0.1, f64::max) * 1.15;
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let root = BitMapBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let title = format!(
        "sluice-loadtest call: {} profile, {} participants",
        report["profile"].as_str().unwrap_or("?"),
        report["participants_joined"]
    );
    let root = root.titled(&title, ("sans-serif", 22)).map_err(|x| e(&x))?;
    let (top, bottom) = root.split_vertically(330);
    let mut c = ChartBuilder::on(&top)
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..pps_max)
        .map_err(|x| e(&x))?;
    c.configure_mesh()
        .x_desc("seconds into the window")
        .y_desc("received packets/s")
        .draw()
        .map_err(|x| e(&x))?;
    c.draw_series(LineSeries::new(pps, BLUE.stroke_width(2)))
        .map_err(|x| e(&x))?;
    let mut c = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..lat_max)
        .map_err(|x| e(&x))?;
    c.configure_mesh()
        .x_desc("seconds into the window")
        .y_desc("end-to-end latency (ms)")
        .draw()
        .map_err(|x| e(&x))?;
    c.draw_series(LineSeries::new(p50, GREEN.stroke_width(2)))
        .map_err(|x| e(&x))?
        .label("p50")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    c.draw_series(LineSeries::new(p99, RED.stroke_width(2)))
        .map_err(|x| e(&x))?
        .label("p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn draws_a_png_of_the_timeline() {
        let timeline: Vec<Value> = (1..=10)
            .map(|t| {
                json!({"t": t as f64, "received_pps": 1000.0 + t as f64 * 10.0,
                            "latency_p50_ms": 1.0, "latency_p99_ms": 2.0 + t as f64 / 10.0})
            })
            .collect();
        let report = json!({"profile": "video", "participants_joined": 3, "timeline": timeline});
        let path = std::env::temp_dir().join(format!("sluice-plot-{}.png", std::process::id()));
        plot(&report, &path).unwrap();
        let png = std::fs::read(&path).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png.len() > 5000, "{} bytes", png.len());
        std::fs::remove_file(&path).unwrap();
        // A report without a timeline is refused, not drawn empty.
        assert!(plot(&json!({}), &path).is_err());
    }
}
