"""Uses of a trained generator: translating your own images (translate, the Translator API), the studio page
(studio), files to ship (export: safetensors, onnx_export: ONNX graphs) and the authors' sample images that
--mode sample and translate default to (representative).

Imports the method, core.files and core.machinery; nothing in core/ outside this package imports it.
"""
