/* Op ids and kinds, generated from core/ops.def. */
#ifndef KN_OPS_H
#define KN_OPS_H

typedef enum {
    KN_KIND_ELEMENTWISE, KN_KIND_REDUCE, KN_KIND_VIEW, KN_KIND_SHAPE,
    KN_KIND_LIBRARY, KN_KIND_ROW,
} kn_op_kind;

typedef enum {
#define KN_OP(name, arity, kind) KN_OP_##name,
#include "ops.def"
    KN_OP_COUNT
} kn_op;

typedef struct { const char *name; int arity; kn_op_kind kind; } kn_op_info;
extern const kn_op_info kn_op_table[KN_OP_COUNT];

#endif
