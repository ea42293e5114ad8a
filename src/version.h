#ifndef NMP_VERSION_H
#define NMP_VERSION_H
#define NMP_VERSION "0.1.0"
/* The ONNX release whose onnx.proto is in onnx_proto/. */
#define NMP_ONNX_SCHEMA "1.23.2"
#endif
