"""Caffe solvers: read and checked (:mod:`surgery.solver.caffe`), and run exactly in
torch by an emitted model (:mod:`surgery.solver.runtime`)."""
