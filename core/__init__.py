"""Light shared pieces of VideoScore Queue: settings, the error tree, the model registry and job spec.

Everything here imports only the standard library and pydantic, so the producer (which pipelines import)
stays free of torch, transformers, av and numpy.
"""
