"""Training and evaluation of the lung-nodule models: composite synthesis, dataset readers, metrics, the
training entry points. Inference (`pipelines.lung_nodule.pipeline`) never imports this package."""
