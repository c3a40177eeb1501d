"""C and C++ deployment: a generated, readable project per runtime, built and checked here.

- :mod:`shipyard.cpp.targets`: what each runtime (libtorch, TF C API, ONNX Runtime, LiteRT)
  can run and where its headers and libraries are.
- :mod:`shipyard.cpp.project`: writes the project (CMakeLists.txt, main.cpp/main.c, the model,
  sample inputs, README) from the templates in ``templates/``.
- :mod:`shipyard.cpp.build`: checks the toolchain, runs CMake, runs the program.
- :mod:`shipyard.cpp.check`: the program's outputs against the Python runtime's, judged by
  the verification core.
"""
