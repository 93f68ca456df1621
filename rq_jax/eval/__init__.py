"""Everything that measures: `python -m rq_jax.evaluate` is a thin command line over these modules.

  io          image folders and `.npz` image sets, JSON results, fixed-size batches for jitted networks
  fid         FID, Inception Score, improved precision/recall from network outputs (numpy/scipy)
  image_sets  Inception activations and statistics of image sets; `compute_fid` between two sets
  recon       reconstruction metrics of a stage-1 run (PSNR, SSIM, LPIPS, per-depth PSNR, codebook use, rFID)
  generate    samples of a stage-2 run for FID / IS / precision-recall, sharded over all devices
  judge       a small CNN trained on the real data, judging conditional samples of the demo

The Inception-v3 network itself is `rq_jax.models.inception`; one progress line is `rq_jax.metrics.Progress`.
"""
