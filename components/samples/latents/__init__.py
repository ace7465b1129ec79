"""The latent cache: every sample encoded once by the frozen VAE, so training skips the encoder.

The ``latents`` stage calls ``encode.encode_samples_to_latents`` (or ``encode.write_disabled_manifest``
when the cache is off, so the stage has an output either way); the trainer reads the result with
``read.LatentSampleDataset`` and draws a latent per step with ``read.sample_posterior``. What both
sides agree on (names, version, arrow schema) is in ``schema``.

What is stored is the VAE posterior, not one draw of it: per modality the mean and the standard
deviation of ``vae.encode(x).latent_dist``, float32, NOT multiplied by the VAE's
``scaling_factor``. The trainer draws ``mean + std * noise`` each time it sees a sample (fresh
posterior noise every epoch, exactly what encoding on the fly gives) and only then multiplies by
the scaling factor, so one cache serves any scaling factor a run chooses.

On-disk format (``LATENT_FORMAT_VERSION`` 1), one shard per sample shard with the same file
name, rows in the same order (sorted by ``sample_id``) and the same row-group size; the layout of
``components.samples.shards`` (raw little-endian bytes per array, shapes in the schema metadata),
under the schema metadata key ``mesa.latents``:

======================  ============  ======================================================
column                  arrow type    content
======================  ============  ======================================================
sample_id ... month     as samples    the sample shard's scalar columns, unchanged
mask_latent             large_binary  uint8 (h, w): 1 = valid latent position
rgb_latent_mean         large_binary  float32 (C, h, w): posterior mean of the plain RGB
rgb_latent_std          large_binary  float32 (C, h, w): its posterior standard deviation
rgb_shadow_latent_mean  large_binary  float32 (C, h, w) of the shadow-corrected RGB; null when
rgb_shadow_latent_std   large_binary  the sample has no ``rgb_shadow``
dem_latent_mean         large_binary  float32 (C, h, w) of ``dem_to_model(dem, dem_scale_m)``
dem_latent_std          large_binary  float32 (C, h, w)
======================  ============  ======================================================

The metadata also records the VAE's scaling factor, a hash of its configuration and of its
weights, and ``dem_scale_m``, so a reader can refuse a cache made by another VAE or DEM scale.
``manifest.json`` beside the shards sums them up (``read_manifest``). Files are written through
a temporary file and renamed, and hold nothing that depends on time or machine: the same
samples and VAE give the same bytes.
"""
