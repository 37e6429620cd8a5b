#include "ops.h"

const kn_op_info kn_op_table[KN_OP_COUNT] = {
#define KN_OP(name, arity, kind) [KN_OP_##name] = {#name, arity, kind},
#include "ops.def"
};
/* Breaks the build when ops.def grows and a table below falls behind. */
_Static_assert(sizeof kn_op_table / sizeof kn_op_table[0] == KN_OP_COUNT, "op table size");
