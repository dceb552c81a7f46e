use telecho_sim::noise::GaussianNoise;

#[test]
fn statistics_match_sigma() {
    let mut n = GaussianNoise::new(42, 0.05).unwrap();
    let xs: Vec<f64> = (0..100_000).map(|_| n.sample()).collect();
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64;
    // Standard error of the mean: 0.05/sqrt(1e5) ≈ 1.6e-4 N.
    assert!(mean.abs() < 8e-4, "mean {mean} N");
    assert!((var.sqrt() - 0.05).abs() < 1e-3, "std {} N", var.sqrt());
}

#[test]
fn same_seed_same_stream_different_seed_different_stream() {
    let a: Vec<f64> = {
        let mut n = GaussianNoise::new(1, 1.0).unwrap();
        (0..64).map(|_| n.sample()).collect()
    };
    let b: Vec<f64> = {
        let mut n = GaussianNoise::new(1, 1.0).unwrap();
        (0..64).map(|_| n.sample()).collect()
    };
    let c: Vec<f64> = {
        let mut n = GaussianNoise::new(2, 1.0).unwrap();
        (0..64).map(|_| n.sample()).collect()
    };
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn refuses_bad_sigma() {
    for s in [f64::NAN, -0.1, f64::INFINITY] {
        let e = GaussianNoise::new(0, s).unwrap_err();
        assert!(e.to_string().contains("standard deviation"), "{e}");
    }
    assert_eq!(GaussianNoise::new(0, 0.0).unwrap().sample(), 0.0);
}
