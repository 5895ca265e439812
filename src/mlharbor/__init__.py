"""MLHarbor: a self-hosted server for the Rekognition stream processor and Comprehend custom NER APIs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlharbor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"
