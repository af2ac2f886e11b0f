"""medxfer: a pytest benchmark harness for transfer learning to medical imaging."""

__version__ = "0.1.0"
