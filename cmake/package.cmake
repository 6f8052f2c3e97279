# The install tree's package files: vmepConfig.cmake (find_package(vmep
# CONFIG) gives vmep::vmep, the shared library, and vmep::vmep_static) and
# pkg-config files (vmep.pc, its Libs.private for --static, and
# vmep-static.pc, which names libvmep.a itself). Both are relocatable: they
# find the prefix from where they are installed.
include(CMakePackageConfigHelpers)

set(VMEP_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/vmep)
install(EXPORT vmepTargets NAMESPACE vmep:: DESTINATION ${VMEP_CMAKE_DIR})
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/vmepConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/vmepConfig.cmake
  INSTALL_DESTINATION ${VMEP_CMAKE_DIR})
write_basic_package_version_file(
  ${CMAKE_CURRENT_BINARY_DIR}/vmepConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/vmepConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/vmepConfigVersion.cmake
  DESTINATION ${VMEP_CMAKE_DIR})

# pkg-config: the prefix is found from the .pc file's own folder.
file(RELATIVE_PATH VMEP_PC_TO_PREFIX
  ${CMAKE_INSTALL_FULL_LIBDIR}/pkgconfig ${CMAKE_INSTALL_PREFIX})
string(REGEX REPLACE "/$" "" VMEP_PC_TO_PREFIX "${VMEP_PC_TO_PREFIX}")
# The static CUDA runtime comes from this build's toolkit.
set(VMEP_CUDART_STATIC_LIBS
  "-L${CUDAToolkit_LIBRARY_DIR} -lcudart_static -lstdc++ -lpthread -ldl -lrt -lm")
foreach(pc vmep vmep-static)
  configure_file(${CMAKE_CURRENT_LIST_DIR}/${pc}.pc.in
    ${CMAKE_CURRENT_BINARY_DIR}/${pc}.pc @ONLY)
  install(FILES ${CMAKE_CURRENT_BINARY_DIR}/${pc}.pc
    DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
endforeach()
