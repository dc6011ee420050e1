/* Micro-benchmark for issue 16's int8 design: the int8 panel product as cylstm
 * runs it on AVX-512 VNNI (int16 activations times int8 weights widened to int16,
 * vpmovsxbw + vpdpwssd, k pairs) against u8 activations times s8 weights
 * (vpdpbusd, k quads, no widening: ONNX Runtime's DynamicQuantizeLSTM's
 * precision).  Blocks of 6 rows x 64 columns (4 zmm), 24 int32 accumulators, over
 * N/64 panels of K x 64 int8 weights.  Not built by setup.py; run by hand on a
 * CPU with avx512_vnni:
 *
 *     gcc -O2 -o /tmp/vb bench/int8_dot_microbench.c && /tmp/vb M K N reps
 *
 * Intel(R) Xeon(R) Processor (2 cores), family 6 model 207, 2026-12-08, five
 * rounds each, GOP/s (2 per multiply-add) vpdpwssd / vpdpbusd: M 30 K 384 N 1024
 * (weights in L2) 113-126 / 222-225; M 12 K 1024 N 4096 (4 MiB, L3) 114-117 /
 * 218-231; M 60 K 1024 N 2048 110-120 / 151-224; M 6 K 512 N 2048 104-111 /
 * 204-214: 1.8-2.0x.  (SciPy's sgemm on the same core: 155-159 GFLOP/s: the
 * present int8 kernel multiplies slower than float32 FMAs; its gains are bytes.) */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
// P: panel of K x 64 int8 (layout depends), A: M x K activations, Z: M x 64 int32; N/64 panels
#define R 6
__attribute__((target("avx512f,avx512bw,avx512vnni")))
static void wssd(const int8_t* P, const int16_t* A, int K, int lda, int32_t* Z){
  // layout: per k-pair, 4 groups of 16 cols, each 32 bytes (16 cols x 2 k interleaved)
  __m512i s[R][4];
  for(int r=0;r<R;r++)for(int c=0;c<4;c++)s[r][c]=_mm512_setzero_si512();
  const int8_t* p=P;
  for(int k=0;k<K;k+=2,p+=128){
    __m512i w0=_mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(p)));
    __m512i w1=_mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(p+32)));
    __m512i w2=_mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(p+64)));
    __m512i w3=_mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(p+96)));
    for(int r=0;r<R;r++){
      __m512i a=_mm512_set1_epi32(*(const int32_t*)(A+r*lda+k));
      s[r][0]=_mm512_dpwssd_epi32(s[r][0],a,w0);s[r][1]=_mm512_dpwssd_epi32(s[r][1],a,w1);
      s[r][2]=_mm512_dpwssd_epi32(s[r][2],a,w2);s[r][3]=_mm512_dpwssd_epi32(s[r][3],a,w3);
    }
  }
  for(int r=0;r<R;r++)for(int c=0;c<4;c++)_mm512_storeu_si512(Z+r*64+c*16,s[r][c]);
}
__attribute__((target("avx512f,avx512bw,avx512vnni")))
static void busd(const int8_t* P, const uint8_t* A, int K, int lda, int32_t* Z){
  // layout: per k-quad, 4 groups of 16 cols, each 64 bytes (16 cols x 4 k)
  __m512i s[R][4];
  for(int r=0;r<R;r++)for(int c=0;c<4;c++)s[r][c]=_mm512_setzero_si512();
  const int8_t* p=P;
  for(int k=0;k<K;k+=4,p+=256){
    __m512i w0=_mm512_loadu_si512(p),w1=_mm512_loadu_si512(p+64),w2=_mm512_loadu_si512(p+128),w3=_mm512_loadu_si512(p+192);
    for(int r=0;r<R;r++){
      __m512i a=_mm512_set1_epi32(*(const int32_t*)(A+r*lda+k));
      s[r][0]=_mm512_dpbusd_epi32(s[r][0],a,w0);s[r][1]=_mm512_dpbusd_epi32(s[r][1],a,w1);
      s[r][2]=_mm512_dpbusd_epi32(s[r][2],a,w2);s[r][3]=_mm512_dpbusd_epi32(s[r][3],a,w3);
    }
  }
  for(int r=0;r<R;r++)for(int c=0;c<4;c++)_mm512_storeu_si512(Z+r*64+c*16,s[r][c]);
}
int main(int argc,char**argv){
  int M=atoi(argv[1]),K=atoi(argv[2]),N=atoi(argv[3]),reps=atoi(argv[4]);
  int np=N/64; size_t pb=(size_t)K*64;
  int8_t* P=aligned_alloc(64,pb*np); for(size_t i=0;i<pb*np;i++)P[i]=(int8_t)(rand()%255-127);
  int16_t* A16=aligned_alloc(64,(size_t)M*K*2+64); uint8_t* A8=aligned_alloc(64,(size_t)M*K+64);
  for(int i=0;i<M*K;i++){A16[i]=rand()%32767;A8[i]=rand()%255;}
  int32_t* Z=aligned_alloc(64,(size_t)M*N*4+4096);
  int Mb=M/R*R;
  for(int round=0;round<5;round++){
    double t0=now();
    for(int it=0;it<reps;it++) for(int q=0;q<np;q++) for(int r=0;r<Mb;r+=R) wssd(P+q*pb,A16+r*K,K,K,Z+(r*np+q)*64%(M*N));
    double t1=now();
    for(int it=0;it<reps;it++) for(int q=0;q<np;q++) for(int r=0;r<Mb;r+=R) busd(P+q*pb,A8+r*K,K,K,Z+(r*np+q)*64%(M*N));
    double t2=now();
    double ops=2.0*Mb*K*N*reps;
    printf("M %d K %d N %d: vpdpwssd %.1f GOP/s  vpdpbusd %.1f GOP/s  ratio %.2f\n",Mb,K,N,ops/(t1-t0)/1e9,ops/(t2-t1)/1e9,(t1-t0)/(t2-t1));
  }
  volatile int32_t sink = Z[5];
  (void)sink;
  return 0;
}
