// forward_cpu.h: the CPU backend's GPT-2 forward pass (fp32, OpenBLAS, OpenMP).
#pragma once
#include "model/activations.h"
#include "model/gpt2.h"

// tokens (B, T) with B, T = a->B, a->T, already checked by gpt2_check_tokens.
int gpt2_forward_cpu(const GPT2Model *m, const int *tokens, GPT2Acts *a);
