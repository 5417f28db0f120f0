//! The soak chart: acked records/s (left axis) and the aggregator's RSS (right axis) over time,
//! as an SVG (plotters' SVG backend: no font or image libraries needed), with the end of the
//! warm-up marked, so "RSS flat after warm-up" can be seen rather than only asserted.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

/// What a soak recorded; written as `soak.json` next to the results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SoakData {
    pub rate: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// `(seconds, acked records/s)`, one point per second.
    pub throughput: Vec<(f64, f64)>,
    /// `(seconds, RSS MB)`, one point per sample.
    pub rss: Vec<(f64, f64)>,
}

/// Draws `data` into an SVG file at `out`.
pub fn draw(data: &SoakData, out: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(out, (1000, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let t_max = data
        .throughput
        .iter()
        .chain(&data.rss)
        .map(|p| p.0)
        .fold(data.duration_s, f64::max)
        .max(1.0);
    let r_max = data
        .throughput
        .iter()
        .map(|p| p.1)
        .fold(data.rate, f64::max)
        .max(1.0)
        * 1.15;
    let m_max = data.rss.iter().map(|p| p.1).fold(1.0, f64::max) * 1.25;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "soak at {:.0} records/s: throughput and aggregator RSS",
                data.rate
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..r_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .set_secondary_coord(0.0..t_max, 0.0..m_max);
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("acked records/s")
        .y_label_formatter(&|v| format!("{:.0}k", v / 1e3))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_secondary_axes()
        .y_desc("RSS MB")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(data.throughput.iter().copied(), &BLUE))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("acked records/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_secondary_series(LineSeries::new(
            data.rss.iter().copied(),
            RED.stroke_width(2),
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("RSS MB (right)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    if data.warmup_s > 0.0 {
        chart
            .draw_series(LineSeries::new(
                [(data.warmup_s, 0.0), (data.warmup_s, r_max)],
                BLACK.mix(0.6).stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label("end of warm-up")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// RSS growth after warm-up: `(peak after - peak during warm-up, least-squares slope in MB per
/// minute over the samples after warm-up)`; `None` without samples on both sides.
pub fn rss_growth(rss: &[(f64, f64)], warmup_s: f64) -> Option<(f64, f64)> {
    let warm: Vec<f64> = rss
        .iter()
        .filter(|p| p.0 <= warmup_s)
        .map(|p| p.1)
        .collect();
    let after: Vec<(f64, f64)> = rss.iter().copied().filter(|p| p.0 > warmup_s).collect();
    if warm.is_empty() || after.is_empty() {
        return None;
    }
    let warm_peak = warm.iter().copied().fold(f64::MIN, f64::max);
    let after_peak = after.iter().map(|p| p.1).fold(f64::MIN, f64::max);
    let n = after.len() as f64;
    let mx = after.iter().map(|p| p.0).sum::<f64>() / n;
    let my = after.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = after.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = after.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = if sxx > 0.0 { sxy / sxx * 60.0 } else { 0.0 };
    Some((after_peak - warm_peak, slope))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_and_slope() {
        let flat: Vec<(f64, f64)> = (0..20)
            .map(|i| (i as f64 * 10.0, 30.0 + (i % 2) as f64))
            .collect();
        let (g, s) = rss_growth(&flat, 50.0).unwrap();
        assert!(g.abs() < 1e-9, "{g}");
        assert!(s.abs() < 0.1, "{s}");
        let leak: Vec<(f64, f64)> = (0..20)
            .map(|i| (i as f64 * 10.0, 30.0 + i as f64))
            .collect();
        let (g, s) = rss_growth(&leak, 50.0).unwrap();
        assert_eq!(g, 14.0);
        assert!((s - 6.0).abs() < 1e-9, "1 MB per 10 s is 6 MB/min: {s}");
        assert!(rss_growth(&leak, 1000.0).is_none());
    }

    #[test]
    fn draws_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let data = SoakData {
            rate: 5000.0,
            duration_s: 30.0,
            warmup_s: 10.0,
            throughput: (1..=30)
                .map(|t| (t as f64, 5000.0 - (t % 3) as f64 * 50.0))
                .collect(),
            rss: (0..=3)
                .map(|i| (i as f64 * 10.0, 20.0 + i as f64 * 0.1))
                .collect(),
        };
        let out = dir.path().join("soak.svg");
        draw(&data, &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        assert!(
            svg.contains("polyline") || svg.contains("path"),
            "no lines drawn"
        );
        assert!(svg.contains("RSS MB"));
    }
}
