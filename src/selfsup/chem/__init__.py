"""Molecules: objectives behind a counting oracle, a graph GA, a SMILES apprentice and GEGL
(Ahn et al., 2020). Needs RDKit: ``pip install 'selfsup[chem]'``."""
